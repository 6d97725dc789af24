"""Runner hygiene: progress bars collapse to their final line; the malloc settings reach
every process that trains (bdlib/allocator.py says why they matter)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat

from bdlib.allocator import ALLOCATOR_ENV, allocator_settings, with_allocator_env
from bdlib.nbstreams import collapse_streams, overlay_carriage_returns

ROOT = Path(__file__).resolve().parent.parent


def test_carriage_returns_overlay_like_a_terminal():
    assert overlay_carriage_returns("\r 10%\r 50%\r100%\n") == "100%\n"
    assert overlay_carriage_returns("abcdef\rxy") == "xycdef"  # a shorter redraw leaves the tail
    assert overlay_carriage_returns("done\r") == "done"  # a trailing return erases nothing
    assert overlay_carriage_returns("a\nb\rc\n") == "a\nc\n"


def _stream(name, text):
    return nbformat.v4.new_output("stream", name=name, text=text)


def test_collapse_streams_merges_redraws_and_keeps_other_outputs_in_order():
    figure = nbformat.v4.new_output("display_data", data={"text/plain": "<Figure>"})
    cell = nbformat.v4.new_code_cell("run()", outputs=[
        _stream("stderr", "\r"), _stream("stderr", "bar:  50%"), _stream("stderr", "\rbar: 100%"),
        _stream("stderr", "\n"), _stream("stdout", "result 1\n"), _stream("stdout", "result 2\n"),
        figure, _stream("stderr", "\rnext: 100%\n")])
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# t"), cell])
    assert collapse_streams(nb) == 4
    outs = nb.cells[1].outputs
    assert [(o.output_type, o.get("name")) for o in outs] == [
        ("stream", "stderr"), ("stream", "stdout"), ("display_data", None), ("stream", "stderr")]
    assert outs[0].text == "bar: 100%\n" and outs[1].text == "result 1\nresult 2\n" and outs[3].text == "next: 100%\n"
    assert collapse_streams(nb) == 0  # idempotent


def test_committed_notebooks_hold_no_progress_bar_redraws():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        assert collapse_streams(nb) == 0, f"{path.name} holds uncollapsed stream outputs"


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


def test_runner_environment_reaches_a_child_process():
    """glibc reads the variables at start-up: a child started after with_allocator_env sees them."""
    env = with_allocator_env({k: v for k, v in os.environ.items() if k not in ALLOCATOR_ENV})
    code = "import os; print(os.environ.get('MALLOC_MMAP_MAX_'), os.environ.get('MALLOC_TRIM_THRESHOLD_'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(env)).stdout.split()
    assert out == [ALLOCATOR_ENV["MALLOC_MMAP_MAX_"], ALLOCATOR_ENV["MALLOC_TRIM_THRESHOLD_"]]


def test_run_all_executes_with_the_allocator_env_and_collapses_progress_bars(tmp_path, monkeypatch):
    """End to end through papermill: the kernel a run starts sees the malloc settings, and the
    executed notebook keeps one line per progress bar."""
    from bdlib import runner

    src = tmp_path / "00_probe.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import os\nfrom tqdm import tqdm\nfor _ in tqdm(range(50), desc='probe', mininterval=0): pass\n"
        "print(os.environ.get('MALLOC_MMAP_MAX_'), os.environ.get('MALLOC_TRIM_THRESHOLD_'))")],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}), src)
    monkeypatch.setattr(runner, "notebooks", lambda only=None: [src])
    monkeypatch.setenv("BDLIB_PROFILE", "smoke")  # run_all sets it; restored afterwards
    for key in ALLOCATOR_ENV:
        monkeypatch.delenv(key, raising=False)
    assert runner.run_all("smoke", output_dir=tmp_path / "out") == 0
    outs = nbformat.read(tmp_path / "out" / src.name, as_version=4).cells[0].outputs
    stream = {name: "".join(o.text for o in outs if o.get("name") == name) for name in ("stdout", "stderr")}
    assert len(outs) <= 3  # bar, print, the bar's closing newline (uncollapsed: one output per redraw)
    assert stream["stderr"].count("probe:") == 1 and "50/50" in stream["stderr"]
    assert stream["stdout"].split() == [ALLOCATOR_ENV["MALLOC_MMAP_MAX_"], ALLOCATOR_ENV["MALLOC_TRIM_THRESHOLD_"]]
