"""The malloc settings reach every process that trains (bdlib/allocator.py says why)."""
import os
import subprocess
from pathlib import Path

from bdlib.allocator import ALLOCATOR_ENV, allocator_settings, with_allocator_env

ROOT = Path(__file__).resolve().parent.parent


def test_allocator_env_fills_only_what_is_unset():
    env = with_allocator_env({"MALLOC_MMAP_MAX_": "65536"})
    assert env["MALLOC_MMAP_MAX_"] == "65536"  # the user's value wins
    assert env["MALLOC_TRIM_THRESHOLD_"] == ALLOCATOR_ENV["MALLOC_TRIM_THRESHOLD_"]
    assert allocator_settings({}) == "default glibc malloc"
    assert "MALLOC_MMAP_MAX_=0" in allocator_settings(dict(ALLOCATOR_ENV))


def test_makefile_exports_the_same_allocator_settings():
    """make is how the README's commands train: its recipes must see bdlib's values."""
    env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_ENV}
    out = subprocess.run(["make", "-s", "-f", "Makefile", "-f", "-", "show-env"], input="show-env:\n\t@env\n",
                         capture_output=True, text=True, env=env, cwd=ROOT).stdout.splitlines()
    for key, value in ALLOCATOR_ENV.items():
        assert f"{key}={value}" in out, f"make's recipes do not get {key}={value}"
