"""benchmarks/reproduce_pieces.py puts a run cut into pieces back together (the README's default
`make reproduce` timing is read this way). Each piece runs `bdlib run` from the top, so: a step
counts once, from the piece that first finished it, its re-reading by later pieces apart; the
time a cut piece spent on its unfinished step goes to that step; a piece killed outright ends at
its last heartbeat or write."""
import importlib.util
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from bdlib.paths import REPO_ROOT
from bdlib.timings import record

# a day back: the timings record, written now, lies after every piece but the last
T0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=1)
S = timedelta(seconds=1)


@pytest.fixture
def mod(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))  # it imports its sibling reproduce_modes
    spec = importlib.util.spec_from_file_location("reproduce_pieces", REPO_ROOT / "benchmarks" / "reproduce_pieces.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _pieces(data, *rows):
    data.mkdir(exist_ok=True)
    (data / "pieces.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _start(n, at, **kw):
    return {"piece": n, "mode": "dask2", "profile": "default", "commit": "abc", "started": _iso(T0 + at * S), **kw}


def _touch(path, at):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}")
    os.utime(path, ((T0 + at * S).timestamp(),) * 2)


def _steps(data, monkeypatch, *steps):
    """(step, seconds, finished at) lines of the run's timings record."""
    for step, seconds, at in steps:
        finished = T0 + at * S
        monkeypatch.setattr("bdlib.timings.time", SimpleNamespace(strftime=lambda fmt, *a: finished.strftime(fmt)))
        record(step, seconds, run="r", path=data / "executed" / "timings.jsonl")


def _table(mod, data):
    lines, table = mod.piece_table(data)
    return lines, dict(zip(table.step, table.seconds))


def test_a_piece_killed_in_the_cells_step_gives_its_time_to_that_step(mod, tmp_path, monkeypatch):
    data = tmp_path / "run"
    _pieces(data, _start(1, 0), _start(2, 1000), {"piece": 2, "ended": _iso(T0 + 1600 * S), "rc": 0})
    _touch(data / "store" / "models" / "a" / "metrics.json", 100)
    _touch(data / "store" / "models" / "b" / "metrics.json", 500)  # piece 1's last write: killed after it
    _steps(data, monkeypatch, ("cells: grid", 400.0, 1400), ("01_data", 150.0, 1550))
    lines, got = _table(mod, data)
    assert got == {"cells: grid": 500.0 + 400.0, "01_data": 150.0, "sum of steps": 1050.0}
    assert "500 s, 0 step(s) recorded" in lines[0] and "exited 0" in lines[1]


def test_a_resumed_serial_run_counts_each_part_once_and_the_cut_part_gets_the_lost_time(mod, tmp_path, monkeypatch):
    data = tmp_path / "run"
    _pieces(data, _start(1, 0), _start(2, 6000), {"piece": 2, "ended": _iso(T0 + 7310 * S), "rc": 0})
    _touch(data / "store" / "defenses" / "x" / "metrics.json", 5400)  # part b's work, until the kill
    _steps(data, monkeypatch, ("cells: a", 3600.0, 3600),
           ("cells: a", 5.0, 6005), ("cells: b", 1200.0, 7205), ("01_data", 100.0, 7305))  # piece 2 re-reads a
    _, got = _table(mod, data)
    assert got == {"cells: a": 3600.0, "cells: b": 1800.0 + 1200.0, "01_data": 100.0,
                   "(resuming: re-reading earlier pieces' steps)": 5.0, "sum of steps": 6705.0}


def test_a_piece_killed_in_the_notebooks_ends_at_its_heartbeat_and_keeps_its_finished_steps(mod, tmp_path,
                                                                                            monkeypatch):
    data = tmp_path / "run"
    _pieces(data, _start(1, 0), {"piece": 1, "alive": _iso(T0 + 1500 * S)},
            _start(2, 2000), {"piece": 2, "ended": _iso(T0 + 2900 * S), "rc": 0})
    _touch(data / "notebooks" / "03_x.ipynb", 1450)  # papermill saving 03; no store write after 1000 s
    _touch(data / "store" / "models" / "a" / "metrics.json", 990)
    _steps(data, monkeypatch, ("cells: grid", 1000.0, 1000), ("01_a", 100.0, 1100), ("02_b", 100.0, 1200),
           ("cells: grid", 3.0, 2003), ("01_a", 100.0, 2103), ("02_b", 100.0, 2203), ("03_x", 600.0, 2803))
    lines, got = _table(mod, data)
    assert got == {"cells: grid": 1000.0, "01_a": 100.0, "02_b": 100.0, "03_x": 300.0 + 600.0,
                   "(resuming: re-reading earlier pieces' steps)": 203.0, "sum of steps": 2303.0}
    assert "1500 s, 3 step(s) recorded, 3 new" in lines[0]


def test_a_piece_that_failed_or_was_signalled_carries_its_time_too(mod, tmp_path, monkeypatch):
    data = tmp_path / "run"
    _pieces(data, _start(1, 0), {"piece": 1, "ended": _iso(T0 + 1200 * S), "rc": -9},
            _start(2, 1300), {"piece": 2, "ended": _iso(T0 + 1600 * S), "rc": 0})
    _steps(data, monkeypatch, ("cells: grid", 300.0, 1600))
    assert _table(mod, data)[1] == {"cells: grid": 1500.0, "sum of steps": 1500.0}


def test_a_piece_is_refused_if_it_would_spoil_the_table(mod, tmp_path):
    data = tmp_path / "run"
    _pieces(data, {**_start(1, 0), "mode": "serial"})
    with pytest.raises(SystemExit, match="holds pieces of mode serial"):
        mod.check_next_piece(data, "dask2", "default", "abc")
    with pytest.raises(SystemExit, match="use serial or daskN"):
        mod.start(data, "dask1", "default", REPO_ROOT, REPO_ROOT / "data" / "embedded")
    # the last piece still running (its pid is a live piece of this script)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "reproduce_pieces.py", "start"])
    try:
        for _ in range(100):  # until the child has exec'd (its command line is empty before)
            if b"reproduce_pieces" in (Path(f"/proc/{alive.pid}/cmdline").read_bytes()):
                break
            time.sleep(0.05)
        _pieces(data, _start(1, 0, pid=alive.pid))
        with pytest.raises(SystemExit, match=f"piece 1 is still running \\(pid {alive.pid}\\)"):
            mod.check_next_piece(data, "dask2", "default", "abc")
    finally:
        alive.kill()
        alive.wait()
    assert mod.check_next_piece(data, "dask2", "default", "abc") == 2  # killed: the next piece goes on
    _pieces(data, _start(1, 0, pid=os.getpid()))  # a pid that is not a piece (a reused number: here pytest's)
    assert mod.check_next_piece(data, "dask2", "default", "abc") == 2
    _pieces(data, _start(1, 0), {"piece": 1, "ended": _iso(T0 + 10 * S), "rc": 0})
    with pytest.raises(SystemExit, match="is complete"):
        mod.check_next_piece(data, "dask2", "default", "abc")
