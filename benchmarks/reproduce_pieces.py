"""A whole ``make reproduce`` from an empty store, timed in pieces: for a machine whose sessions
(or a cluster whose jobs) end before the run does.

Why (issue 12: "``make reproduce`` on the default profile from an empty store: report its wall
time, serial and with the Dask local cluster, per notebook"): the default run is ≈ 6.5 h on the
2-core machine, and a session here ends after 3 h, killing every process. The store keeps every
finished cell, so running the same command again goes on where the last piece stopped; this
script runs such pieces in one data folder and puts the step table back together.

    python benchmarks/reproduce_pieces.py start --mode dask2 --data DIR [--repo REPO] [--profile default]
    python benchmarks/reproduce_pieces.py report --data DIR

``start`` runs one piece in the foreground (detach it yourself, e.g. ``setsid -f``): ``python -m
bdlib run --profile P --output-dir DIR/notebooks`` in ``REPO`` (default: this repository; a clone
pinned at the commit being timed keeps later edits out of the timing) with ``BDLIB_DATA=DIR``
and ``make``'s malloc settings; ``serial`` adds ``--serial``, ``daskN`` sets ``BDLIB_WORKERS=N``
(:mod:`benchmarks.reproduce_modes`' modes). A new ``DIR`` gets the embedded wavs copied in (they
are data, not artifacts). Each piece appends its start, and when it exits its end, to
``DIR/pieces.jsonl``; every piece of one folder must have the same mode, profile and commit.

``report`` prints each piece and the step table. Every piece runs ``bdlib run`` from the top:
it re-reads from the store what earlier pieces finished and re-executes their notebooks, so a
step counts once, from the piece that first finished it, and the re-finishing goes to a
``(resuming)`` row. A piece that did not exit 0 spent the rest of its time on a step it left
unfinished; that time goes to the first step that a later piece finishes and no earlier one
had (the step that was in flight: over an uninterrupted run's time by the work in flight that
was lost, at most the cells being computed). A piece killed with this script writes no end: it
ends at its last heartbeat (every 30 s) or its last write to the data folder, whichever is later.
``start`` refuses a piece of another mode, profile or commit, one while the last is still
running, and one after the run completed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from reproduce_modes import mode_env  # noqa: E402  (benchmarks/ is on the path when run as a script)

REPO = Path(__file__).resolve().parent.parent
LOG = "pieces.jsonl"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _append(data: Path, row: dict) -> None:
    with open(data / LOG, "a") as f:
        f.write(json.dumps(row) + "\n")


def read_pieces(data: Path) -> list[dict]:
    """The pieces of ``data`` in order, each with ``started``, ``pid``, its latest heartbeat
    ``alive`` and, if it exited, ``ended`` and ``rc``."""
    pieces: dict[int, dict] = {}
    for line in (data / LOG).read_text().splitlines():
        row = json.loads(line)
        if "started" in row:
            pieces[row["piece"]] = row
        elif row.get("piece") in pieces:
            pieces[row["piece"]].update(row)
    return [pieces[n] for n in sorted(pieces)]


def _alive(pid: int | None) -> bool:
    """Whether ``pid`` is a running piece (this script), not a process that reused the number."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0") if pid else []
    except OSError:
        return False
    return any(a.endswith("reproduce_pieces.py") and b == "start" for a, b in zip(args, args[1:]))


def _commit(repo: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True)
    except FileNotFoundError:  # no git: the folder's pieces must then all say so
        return "unknown"
    return out.stdout.strip() or "unknown"


def check_next_piece(data: Path, mode: str, profile: str, commit: str) -> int:
    """The next piece's number, or a refusal naming why it would spoil the table: a piece of
    another mode, profile or commit; a piece still running; a run already complete."""
    earlier = read_pieces(data) if (data / LOG).exists() else []
    for p in earlier:
        if (p["mode"], p["profile"], p["commit"]) != (mode, profile, commit):
            raise SystemExit(f"{data} holds pieces of mode {p['mode']}, profile {p['profile']}, commit {p['commit']}; "
                             f"this one would be {mode}, {profile}, {commit}: use another folder")
    if earlier and "ended" not in earlier[-1] and _alive(earlier[-1].get("pid")):
        raise SystemExit(f"piece {earlier[-1]['piece']} is still running (pid {earlier[-1]['pid']}): one piece at a time")
    if earlier and earlier[-1].get("rc") == 0:
        raise SystemExit(f"the run in {data} is complete (piece {earlier[-1]['piece']} exited 0): `report` it")
    return len(earlier) + 1


def start(data: Path, mode: str, profile: str, repo: Path, embedded: Path, heartbeat_s: float = 30.0) -> int:
    args, extra = mode_env(mode)
    python = repo / ".venv" / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"no {python}: `make venv` in {repo} first")
    commit = _commit(repo)
    n = check_next_piece(data, mode, profile, commit)
    data.mkdir(parents=True, exist_ok=True)
    if not (data / "embedded").exists():
        shutil.copytree(embedded, data / "embedded")
    sys.path.insert(0, str(repo))
    from bdlib.allocator import with_allocator_env

    env = with_allocator_env({**os.environ, "BDLIB_DATA": str(data), **extra})
    child = subprocess.Popen([str(python), "-m", "bdlib", "run", "--profile", profile,
                              "--output-dir", str(data / "notebooks"), *args], cwd=repo, env=env)
    _append(data, {"piece": n, "mode": mode, "profile": profile, "commit": commit, "started": _now(),
                   "pid": os.getpid()})
    while True:  # a heartbeat: a piece killed with this process ends within heartbeat_s of its last one
        try:
            rc = child.wait(timeout=heartbeat_s)
            break
        except subprocess.TimeoutExpired:
            _append(data, {"piece": n, "alive": _now()})
    _append(data, {"piece": n, "ended": _now(), "rc": rc})
    return rc


def activity(data: Path) -> list[datetime]:
    """When each file of a finished store entry, each executed notebook and the timings record
    was last written, in order: what a piece that left no end did last."""
    files = [*(data / "store").glob("[!.]*/[!.]*/*"), *(data / "notebooks").glob("*"),
             data / "executed" / "timings.jsonl"]
    return sorted(datetime.fromtimestamp(f.stat().st_mtime, timezone.utc) for f in files if f.is_file())


def piece_table(data: Path):
    """(one line per piece, the step table: ``step``, ``seconds``).

    Every piece runs ``bdlib run`` from the top, so it first re-reads what earlier pieces
    finished (from the store) and re-executes their notebooks: a step is counted once, from
    the piece that first finished it, and the re-finishing goes to a ``(resuming)`` row. A
    piece that did not exit 0 spent the rest of its time on a step it left unfinished: that
    time goes to the first step that a later piece finishes and no earlier piece had. A piece
    with no recorded end (killed with its parent) ends at its last heartbeat or its last
    write of the data folder, whichever is later."""
    import pandas as pd

    sys.path.insert(0, str(REPO))
    from bdlib.timings import read_timings, timings_path

    pieces = read_pieces(data)
    writes = activity(data)
    steps = read_timings(timings_path(data))
    steps["finished_at"] = [datetime.strptime(t, "%Y-%m-%dT%H:%M:%S%z") for t in steps["finished"]]
    totals: dict[str, float] = {}
    resuming = carried = 0.0
    lines = []
    for i, p in enumerate(pieces):
        begin = _time(p["started"])
        nxt = _time(pieces[i + 1]["started"]) if i + 1 < len(pieces) else None
        mine = steps[(steps.finished_at >= begin) & ((steps.finished_at < nxt) if nxt is not None else True)]
        if "ended" in p:
            end, how = _time(p["ended"]), f"exited {p['rc']}"
        else:
            seen = [w for w in writes if w >= begin and (nxt is None or w < nxt)] + list(mine.finished_at)
            seen += [_time(p["alive"])] if "alive" in p else []
            end = max(seen, default=begin)
            how = "no end recorded (killed, or still running): ends at its last heartbeat or write"
        new = 0
        for step, secs in zip(mine.step, mine.seconds):
            if step in totals:
                resuming += float(secs)
                continue
            totals[step] = float(secs) + (carried if new == 0 else 0.0)
            new += 1
        if new:
            carried = 0.0
        if p.get("rc") != 0:
            carried += max((end - begin).total_seconds() - float(mine.seconds.sum()), 0.0)
        lines.append(f"piece {p['piece']}: {p['started']} to {end:%Y-%m-%dT%H:%M:%SZ} ({how}); "
                     f"{(end - begin).total_seconds():.0f} s, {len(mine)} step(s) recorded, {new} new")
    rows = [*totals.items(), *([("(resuming: re-reading earlier pieces' steps)", resuming)] if resuming else []),
            *([("(unfinished)", carried)] if carried else [])]
    rows.append(("sum of steps", sum(v for _, v in rows)))
    return lines, pd.DataFrame(rows, columns=["step", "seconds"])


def report(data: Path) -> None:
    lines, table = piece_table(data)
    first = read_pieces(data)[0]
    print(f"{data}: {len(lines)} piece(s), mode {first['mode']}, profile {first['profile']}, commit {first['commit']}, "
          f"{os.cpu_count()} cores")
    print("\n".join("  " + line for line in lines))
    print(table.round(1).to_string(index=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["start", "report"])
    ap.add_argument("--data", type=Path, required=True, help="the run's data folder (BDLIB_DATA), kept between pieces")
    ap.add_argument("--mode", default="serial", help="serial or daskN (start)")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--repo", type=Path, default=REPO, help="the checkout whose code is timed (its .venv runs it)")
    ap.add_argument("--embedded", type=Path, default=REPO / "data" / "embedded",
                    help="embedded wavs copied into a new data folder")
    a = ap.parse_args()
    if a.action == "start":
        sys.exit(start(a.data.resolve(), a.mode, a.profile, a.repo.resolve(), a.embedded))
    report(a.data.resolve())


if __name__ == "__main__":
    main()
