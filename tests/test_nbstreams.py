"""Progress bars in executed notebooks collapse to their final line (bdlib/nbstreams.py)."""
from pathlib import Path

import nbformat

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
