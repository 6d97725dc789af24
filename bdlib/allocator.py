"""glibc malloc settings that make a CPU training step 1.8-3x faster here.

Why: SmallCNN's activations at a defense batch are tens of MB each (conv1 output at batch
80: 80×64×100×39 floats = 80 MB). glibc serves every allocation above its mmap threshold
(32 MB at most) with a fresh ``mmap`` and returns it with ``munmap`` on free, so each
forward-backward pass page-faults and zero-fills hundreds of MB again; on the 2-core CI
machine over 40 % of the benchmark's CPU time was kernel (sys) time. Serving them from the
heap and never trimming it lets freed memory be reused (same arithmetic):

    benchmarks/gnft_cost.py, FT step: batch 80 168 -> 89-96 ms; batch 256 888 -> 293-342 ms
    make test (smoke profile, mostly small batches and kernel start-ups): 227 s -> 198 s

The price is a higher resident peak (memory is kept instead of returned; see the benchmark's
peak RSS column). glibc reads these variables once at process start, so they must be in the
environment of the process that trains: ``make`` exports them, ``python -m bdlib run`` sets
them for the notebook kernels it starts, and ``make venv`` writes them into the ``bdlib``
Jupyter kernelspec. For ``make`` and the runner a value already in the environment wins; the
kernelspec's are fixed when ``make venv`` installs it (to change them, delete
``.venv/.bdlib-installed`` and run ``make venv MALLOC_MMAP_MAX_=...``). They are inert under another libc.
"""
from __future__ import annotations

import os
from typing import MutableMapping

#: the settings ``make`` exports (the Makefile repeats them; ``tests/test_allocator.py`` checks they agree)
ALLOCATOR_ENV: dict[str, str] = {
    "MALLOC_MMAP_MAX_": "0",  # no mmap'd chunks: large tensors come from the heap and are reused
    "MALLOC_TRIM_THRESHOLD_": "4294967296",  # never hand the heap's top back to the OS mid-run
}


def with_allocator_env(env: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """``env`` (default: ``os.environ``) with :data:`ALLOCATOR_ENV` added where not already set."""
    env = os.environ if env is None else env
    for key, value in ALLOCATOR_ENV.items():
        env.setdefault(key, value)
    return env


def allocator_settings(env: MutableMapping[str, str] | None = None) -> str:
    """The allocator variables in effect, for benchmark headers (``default glibc`` if none)."""
    env = os.environ if env is None else env
    set_ = [f"{k}={env[k]}" for k in ALLOCATOR_ENV if k in env]
    return " ".join(set_) or "default glibc malloc"
