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


def _probe_with_injected_cell(path):
    """A notebook as an in-place run with ``-p x=2`` leaves it: its parameters cell, then
    papermill's injected cell, then a cell that prints ``x``; the run recorded in its metadata."""
    nbformat.write(nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("# Parameters\nx = 2\n", metadata={"tags": ["injected-parameters"]}),
        nbformat.v4.new_code_cell("print('x is', x)")],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                  "papermill": {"parameters": {"x": 2}}}), path)


def test_a_plain_run_drops_the_parameters_an_earlier_run_injected(tmp_path, monkeypatch):
    """Papermill replaces an injected cell only when it is given parameters: without the runner
    stripping it, a plain run after ``-p x=2`` still ran with x = 2 (and ``-p grid=long`` once
    pinned notebook 45 to hours of curves for every later run)."""
    from bdlib import runner

    src = tmp_path / "00_probe.ipynb"
    monkeypatch.setattr(runner, "notebooks", lambda only=None: [src])
    monkeypatch.setenv("BDLIB_PROFILE", "smoke")

    def printed(**kw):
        _probe_with_injected_cell(src)
        assert runner.run_all("smoke", output_dir=tmp_path / "out", **kw) == 0
        nb = nbformat.read(tmp_path / "out" / src.name, as_version=4)
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        return "".join(o.text for o in nb.cells[-1].outputs if o.get("name") == "stdout").strip(), len(injected), nb

    text, injected, nb = printed()
    assert (text, injected) == ("x is 1", 0)
    assert nb.metadata.papermill["input_path"] == str(src)  # not the stripped copy it ran from
    assert nb.metadata.papermill["parameters"] == {}
    assert "x = 2" in src.read_text()  # the source notebook is left as it was
    assert not list((tmp_path / "out").glob("*.partial"))
    assert printed(parameters={"x": 3})[:2] == ("x is 3", 1)  # parameters given: injected as usual


def test_no_committed_notebook_carries_injected_parameters():
    """nbval runs the committed cells as they are: an injected cell left by a ``-p`` run would
    pin its values (e.g. notebook 45's ``grid="long"``) under the smoke profile in CI."""
    from bdlib.runner import NOTEBOOK_DIR

    pinned = [p.name for p in sorted(NOTEBOOK_DIR.glob("*.ipynb"))
              if any("injected-parameters" in c.metadata.get("tags", [])
                     for c in nbformat.read(p, as_version=4).cells)]
    assert pinned == []
