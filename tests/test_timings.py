"""bdlib.timings: every finished step of `bdlib run` leaves one whole line, read back per run."""
import json
import multiprocessing as mp

import nbformat
import pytest

from bdlib import timings


def _append_many(path, tag, n, start):
    start.wait()  # all writers at once
    for i in range(n):
        timings.record(f"{tag}-{i}", i * 0.5, run=tag, path=path, note="x" * 10_000)  # longer than a buffered writer's 8 KiB chunk


def test_concurrent_runs_never_split_a_line(tmp_path):
    path = tmp_path / "executed" / "timings.jsonl"
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(4)
    procs = [ctx.Process(target=_append_many, args=(path, f"r{k}", 150, start)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = path.read_text().splitlines()
    assert len(lines) == 600 and all(json.loads(line)["note"] == "x" * 10_000 for line in lines)
    frame = timings.read_timings(path)
    assert frame.attrs["skipped"] == 0
    assert frame.groupby("run").size().to_dict() == {f"r{k}": 150 for k in range(4)}
    for k in range(4):  # each run's own lines stay in the order it wrote them
        assert list(frame[frame.run == f"r{k}"].step) == [f"r{k}-{i}" for i in range(150)]


def test_a_torn_line_is_skipped_and_counted_and_the_latest_run_is_the_default(tmp_path):
    path = tmp_path / "t.jsonl"
    timings.record("01_data", 3.0, run="a", path=path)
    timings.record("10_attack_badnets", 20.0, run="a", path=path)
    with open(path, "a") as f:
        f.write('{"run": "a", "step": "11_att')  # a run killed mid-write
        f.write("\n[1, 2]\n")
    timings.record("01_data", 2.5, run="b", path=path)
    frame = timings.read_timings(path)
    assert frame.attrs["skipped"] == 2 and len(frame) == 3
    latest = timings.run_table(frame)
    assert list(latest.step) == ["01_data"] and latest.seconds.tolist() == [2.5]
    a = timings.run_table(frame, "a")
    assert a.cumulative_s.tolist() == [3.0, 23.0]
    with pytest.raises(ValueError, match="no run 'zz' recorded; recorded runs: a, b"):
        timings.run_table(frame, "zz")
    assert timings.read_timings(tmp_path / "absent.jsonl").empty


def test_run_all_records_each_finished_notebook_and_not_a_failed_one(tmp_path, monkeypatch):
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from bdlib import runner

    monkeypatch.setenv("BDLIB_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("BDLIB_PROFILE", "default")
    monkeypatch.setattr(runner, "_kernel_name", lambda: "python3")
    srcs = []
    for n in (10, 11, 12):
        src = tmp_path / f"{n}_probe.ipynb"
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")]), src)
        srcs.append(src)

    def execute(input_path, output_path, **kw):
        nbformat.write(nbformat.read(input_path, as_version=4), output_path)
        if input_path.endswith("12_probe.ipynb"):
            raise PapermillExecutionError(0, 1, "x = 1", "ValueError", "boom", [])

    monkeypatch.setattr(papermill, "execute_notebook", execute)
    monkeypatch.setattr(runner, "notebooks", lambda only=None: srcs)
    assert runner.run_all("smoke", output_dir=tmp_path / "out", run_id="run-1") == 1
    frame = timings.read_timings()
    assert timings.timings_path() == tmp_path / "data" / "executed" / "timings.jsonl"
    assert list(frame.step) == ["10_probe", "11_probe"] and set(frame.run) == {"run-1"}
    assert set(frame.profile) == {"smoke"} and (frame.seconds >= 0).all()


def test_cli_prints_the_latest_run_and_the_list_of_runs(tmp_path, monkeypatch, capsys):
    from bdlib.__main__ import main

    monkeypatch.setenv("BDLIB_DATA", str(tmp_path))
    assert main(["timings"]) == 0
    assert "no timings recorded yet" in capsys.readouterr().out
    timings.mark("start", run="r0")  # killed in its first step: only its start is recorded
    assert main(["timings", "--runs"]) == 0
    assert "r0" in (out := capsys.readouterr().out) and "no end recorded" in out
    assert main(["timings"]) == 0
    assert "no step finished yet" in capsys.readouterr().out
    timings.record("study (smallcnn)", 100.0, run="r1")
    timings.record("01_data", 5.0, run="r1")
    timings.record("01_data", 4.0, run="r2")
    assert main(["timings", "--run", "r1"]) == 0
    out = capsys.readouterr().out
    assert "run r1: 2 step(s), 105.0 s in all" in out and "study (smallcnn)" in out
    assert main(["timings", "--runs"]) == 0
    out = capsys.readouterr().out
    assert "r1" in out and "r2" in out and "105.0" in out
    assert main(["timings", "--run", "nope"]) == 2
    assert "no run 'nope' recorded" in capsys.readouterr().err


def test_a_run_killed_outright_shows_no_end_and_its_markers_are_not_steps(tmp_path):
    path = tmp_path / "t.jsonl"
    timings.mark("start", run="a", path=path, profile="smoke")
    timings.record("cells: the main table", 40.0, run="a", path=path)
    timings.record("01_data", 3.0, run="a", path=path)
    timings.mark("end", run="a", path=path, rc=0)
    timings.mark("start", run="b", path=path)
    timings.record("cells: the main table", 12.5, run="b", path=path)  # then SIGKILL: no end
    frame = timings.read_timings(path)
    assert frame.attrs["skipped"] == 0 and list(frame.step) == ["cells: the main table", "01_data",
                                                                 "cells: the main table"]
    runs = timings.run_summary(path)
    assert list(runs.index) == ["a", "b"] and runs.steps.tolist() == [2, 1] and runs.total_s.tolist() == [43.0, 12.5]
    assert runs.loc["a", "ended"].startswith("exited 0 at ") and runs.started.notna().all()
    assert runs.loc["b", "ended"] == "no end recorded (killed, or still running)"
    assert runs.loc["b", "last_step"] == frame.finished.iloc[-1]
    with pytest.raises(ValueError, match="event must be one of start, end"):
        timings.mark("stop", run="b", path=path)
