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

A run also marks its start and, when it exits, its end and exit status (``event`` lines, which
are not steps). A run killed outright (a session's or a job's time limit, SIGKILL) has a start
and no end: :func:`run_summary` says so, with its last finished step, so a cut run is told
from a finished one; running the same command again goes on from the store.
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
#: the markers a run leaves beside its steps
EVENTS = ("start", "end")


def timings_path(root: Path | None = None) -> Path:
    """Where the record lives: ``<data root>/executed/timings.jsonl``."""
    return (data_root() if root is None else Path(root)) / "executed" / FILE


def new_run_id() -> str:
    """One id per ``bdlib run`` invocation, so a table can group the steps of one run."""
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def record(step: str, seconds: float, *, run: str, path: Path | None = None, **context) -> dict:
    """Append one step's time as a JSON line (written with a single ``write`` call, so
    concurrent runs never split each other's lines) and return the row."""
    row = {"run": run, "step": step, "seconds": round(float(seconds), 3), "finished": _now(),
           "cores": os.cpu_count(), **context}
    _append(timings_path() if path is None else Path(path), row)
    return row


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _append(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(row, sort_keys=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def mark(event: str, *, run: str, path: Path | None = None, **context) -> dict:
    """Append a run's ``start`` or ``end`` marker (``end`` with the exit status as ``rc``)."""
    if event not in EVENTS:
        raise ValueError(f"event must be one of {', '.join(EVENTS)}, got {event!r}")
    row = {"run": run, "event": event, "at": _now(), "cores": os.cpu_count(), **context}
    _append(timings_path() if path is None else Path(path), row)
    return row


def _lines(path: Path) -> tuple[list[dict], int]:
    rows, skipped = [], 0
    if path.exists():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            if isinstance(row, dict) and ({"run", "step", "seconds"} <= set(row) or {"run", "event"} <= set(row)):
                rows.append(row)
            else:
                skipped += 1
    return rows, skipped


def read_timings(path: Path | None = None) -> pd.DataFrame:
    """Every recorded step as a table (empty, with the key columns, when nothing is recorded).
    A line that does not parse (a run killed mid-write on a full disk) is skipped and counted
    in ``frame.attrs["skipped"]``; a run's start and end markers are not steps."""
    rows, skipped = _lines(timings_path() if path is None else Path(path))
    rows = [r for r in rows if "event" not in r]
    frame = pd.DataFrame(rows, columns=None if rows else ["run", "step", "seconds", "finished"])
    frame.attrs["skipped"] = skipped
    return frame


def run_summary(path: Path | None = None) -> pd.DataFrame:
    """One row per recorded run, in the order they started: when it started, its finished
    steps and their total, the last step's end, and how it ended (``exited N``, or ``no end
    recorded``: killed, or still running). Runs recorded before the markers existed show
    no start."""
    rows, _ = _lines(timings_path() if path is None else Path(path))
    runs: dict[str, dict] = {}
    for r in rows:
        run = runs.setdefault(r["run"], {"run": r["run"], "started": None, "steps": 0, "total_s": 0.0,
                                          "last_step": None, "ended": "no end recorded (killed, or still running)"})
        if r.get("event") == "start":
            run["started"] = r["at"]
        elif r.get("event") == "end":
            how = f"failed ({r['error']})" if r.get("error") else f"exited {r.get('rc')}"
            run["ended"] = f"{how} at {r['at']}"
        else:
            run["steps"] += 1
            run["total_s"] += float(r["seconds"])
            run["last_step"] = r.get("finished")
    return pd.DataFrame(list(runs.values()),
                        columns=["run", "started", "steps", "total_s", "last_step", "ended"]).set_index("run")


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


__all__ = ["EVENTS", "FILE", "mark", "new_run_id", "read_timings", "record", "run_summary", "run_table", "timings_path"]
