"""The runner end to end through papermill (bdlib/runner.py)."""
import nbformat

from bdlib.allocator import ALLOCATOR_ENV


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


def test_tidy_leaves_a_missing_output_alone(tmp_path):
    """A run that failed before papermill wrote its output must still report its own error,
    not a FileNotFoundError from tidying."""
    from bdlib import runner

    runner._tidy(tmp_path / "never_written.ipynb")
    assert not (tmp_path / "never_written.ipynb").exists()
