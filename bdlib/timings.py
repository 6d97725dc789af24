"""A durable record of how long each step of ``python -m bdlib run`` took.

Why (issue 12: "``make reproduce`` from an empty store: report its wall time, per notebook"):
a whole default run is hours on a 2-core machine, longer than a terminal is watched and
sometimes longer than the machine is kept; the per-notebook times it prints scroll away or
die with the session. Each finished step (the study, then every notebook) therefore appends
one JSON line to ``$BDLIB_DATA/executed/timings.jsonl`` the moment it ends, so an interrupted
run keeps what it measured, two runs at once interleave whole lines (one ``write`` of a line
opened for appending), and ``python -m bdlib timings`` reads the table back.

A line holds the run's id (one per invocation of ``bdlib run``), the step, its wall seconds,
when it finished, the machine's core count, and the run's profile, data source, seed and
``jobs``. Whether a step computed its results or read them from the store is not recorded:
time a run from an empty store with a fresh ``BDLIB_DATA`` (or after ``make clean-data``).
"""
from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pandas as pd

from .paths import data_root

FILE = "timings.jsonl"


def timings_path(root: Path | None = None) -> Path:
    """Where the record lives: ``<data root>/executed/timings.jsonl``."""
    return (data_root() if root is None else Path(root)) / "executed" / FILE


def new_run_id() -> str:
    """One id per ``bdlib run`` invocation, so a table can group the steps of one run."""
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def record(step: str, seconds: float, *, run: str, path: Path | None = None, **context) -> dict:
    """Append one step's time as a JSON line (written with a single ``write`` call, so
    concurrent runs never split each other's lines) and return the row."""
    path = timings_path() if path is None else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    row = {"run": run, "step": step, "seconds": round(float(seconds), 3),
           "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cores": os.cpu_count(), **context}
    line = (json.dumps(row, sort_keys=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return row


def read_timings(path: Path | None = None) -> pd.DataFrame:
    """Every recorded step as a table (empty, with the key columns, when nothing is recorded).
    A line that does not parse (a run killed mid-write on a full disk) is skipped and counted
    in ``frame.attrs["skipped"]``."""
    path = timings_path() if path is None else Path(path)
    rows, skipped = [], 0
    if path.exists():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            if isinstance(row, dict) and {"run", "step", "seconds"} <= set(row):
                rows.append(row)
            else:
                skipped += 1
    frame = pd.DataFrame(rows, columns=None if rows else ["run", "step", "seconds", "finished"])
    frame.attrs["skipped"] = skipped
    return frame


def run_table(frame: pd.DataFrame, run: str | None = None) -> pd.DataFrame:
    """The steps of one run (default: the latest to finish a step) in the order they ended,
    with a running total."""
    if frame.empty:
        return frame
    if run is None:
        run = frame.iloc[-1]["run"]
    elif run not in set(frame["run"]):
        raise ValueError(f"no run {run!r} recorded; recorded runs: {', '.join(dict.fromkeys(frame['run']))}")
    t = frame[frame["run"] == run].reset_index(drop=True)
    return t.assign(cumulative_s=t["seconds"].cumsum().round(1))


__all__ = ["FILE", "new_run_id", "read_timings", "record", "run_table", "timings_path"]
