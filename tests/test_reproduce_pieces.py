"""benchmarks/reproduce_pieces.py puts a run cut into pieces back together: a killed piece ends at
its last store write, and its time on the step it left unfinished goes to that step, which the
next piece finishes (the README's default `make reproduce` timing is read this way)."""
import importlib.util
import json
import os
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from bdlib.paths import REPO_ROOT
from bdlib.timings import record

T0 = datetime(2026, 12, 5, 13, 0, 0, tzinfo=timezone.utc)


def _load(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks"))  # it imports its sibling reproduce_modes
    spec = importlib.util.spec_from_file_location("reproduce_pieces", REPO_ROOT / "benchmarks" / "reproduce_pieces.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _write(data, kind, key, at: datetime):
    d = data / "store" / kind / key
    d.mkdir(parents=True)
    f = d / "metrics.json"
    f.write_text("{}")
    os.utime(f, (at.timestamp(), at.timestamp()))


def _step(data, step, seconds, finished: datetime, monkeypatch):
    monkeypatch.setattr("bdlib.timings.time", SimpleNamespace(strftime=lambda fmt, *a: finished.strftime(fmt)))
    record(step, seconds, run="r", path=data / "executed" / "timings.jsonl")


def test_a_killed_piece_counts_to_its_last_store_write_and_its_time_goes_to_the_unfinished_step(tmp_path, monkeypatch):
    mod = _load(monkeypatch)
    data = tmp_path / "run"
    data.mkdir()
    s = timedelta(seconds=1)
    rows = [{"piece": 1, "mode": "dask2", "profile": "default", "commit": "abc", "started": _iso(T0)},
            {"piece": 2, "mode": "dask2", "profile": "default", "commit": "abc", "started": _iso(T0 + 1000 * s)},
            {"piece": 2, "ended": _iso(T0 + 1600 * s), "rc": 0}]
    (data / "pieces.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _write(data, "models", "a", T0 + 100 * s)
    _write(data, "models", "b", T0 + 500 * s)  # piece 1's last write: it was killed some time after
    _write(data, "defenses", "c", T0 + 1300 * s)
    _step(data, "cells: grid", 400.0, T0 + 1400 * s, monkeypatch)
    _step(data, "01_data", 150.0, T0 + 1550 * s, monkeypatch)

    lines, table = mod.piece_table(data)
    got = dict(zip(table.step, table.seconds))
    assert got == {"cells: grid": 500.0 + 400.0, "01_data": 150.0, "sum of steps": 1050.0}
    assert "500 s, 0 step(s) finished" in lines[0] and "exited 0" in lines[1]


def test_a_piece_of_another_mode_or_commit_is_refused(tmp_path, monkeypatch):
    mod = _load(monkeypatch)
    data = tmp_path / "run"
    data.mkdir()
    (data / "pieces.jsonl").write_text(json.dumps(
        {"piece": 1, "mode": "serial", "profile": "default", "commit": "abc", "started": _iso(T0)}) + "\n")
    with pytest.raises(SystemExit, match="holds pieces of mode serial"):
        mod.start(data, "dask2", "default", REPO_ROOT, REPO_ROOT / "data" / "embedded")
    with pytest.raises(SystemExit, match="use serial or daskN"):
        mod.start(data, "dask1", "default", REPO_ROOT, REPO_ROOT / "data" / "embedded")
