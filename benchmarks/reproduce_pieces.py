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

``report`` prints each piece and the step table. A piece that was killed wrote no end: it is
taken to end at the last store write before the next piece began (the work in flight then was
lost and is redone by the next piece, so a step that spans a kill is over an uninterrupted
run's time by at most the cells that were in flight). The steps each piece finished come from
the run's timings record (``DIR/executed/timings.jsonl``, bdlib/timings.py); the time a killed
piece spent on its unfinished step is added to that step, which the next piece finishes (or
goes on with).
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
    """The pieces of ``data``, each with ``started`` and, if it exited, ``ended`` and ``rc``."""
    pieces = []
    for line in (data / LOG).read_text().splitlines():
        row = json.loads(line)
        if "started" in row:
            pieces.append(row)
        elif pieces and row.get("piece") == pieces[-1]["piece"]:
            pieces[-1].update(row)
    return pieces


def start(data: Path, mode: str, profile: str, repo: Path, embedded: Path) -> int:
    args, extra = mode_env(mode)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    if not data.exists():
        data.mkdir(parents=True)
        shutil.copytree(embedded, data / "embedded")
    earlier = read_pieces(data) if (data / LOG).exists() else []
    for p in earlier:
        if (p["mode"], p["profile"], p["commit"]) != (mode, profile, commit):
            raise SystemExit(f"{data} holds pieces of mode {p['mode']}, profile {p['profile']}, commit {p['commit']}; "
                             f"this one would be {mode}, {profile}, {commit}: use another folder")
    n = len(earlier) + 1
    sys.path.insert(0, str(repo))
    from bdlib.allocator import with_allocator_env

    env = with_allocator_env({**os.environ, "BDLIB_DATA": str(data), **extra})
    _append(data, {"piece": n, "mode": mode, "profile": profile, "commit": commit, "started": _now()})
    rc = subprocess.run([str(repo / ".venv" / "bin" / "python"), "-m", "bdlib", "run", "--profile", profile,
                         "--output-dir", str(data / "notebooks"), *args], cwd=repo, env=env).returncode
    _append(data, {"piece": n, "ended": _now(), "rc": rc})
    return rc


def store_writes(data: Path) -> list[datetime]:
    """When each file of a finished store entry was last written, in order."""
    times = [f.stat().st_mtime for f in (data / "store").glob("[!.]*/[!.]*/*") if f.is_file()]
    return sorted(datetime.fromtimestamp(t, timezone.utc) for t in times)


def piece_table(data: Path):
    """(one line per piece, the step table: ``step``, ``seconds``, summed over the pieces)."""
    import pandas as pd

    sys.path.insert(0, str(REPO))
    from bdlib.timings import read_timings, timings_path

    pieces = read_pieces(data)
    writes = store_writes(data)
    steps = read_timings(timings_path(data))
    steps["finished_at"] = [datetime.strptime(t, "%Y-%m-%dT%H:%M:%S%z") for t in steps["finished"]]
    totals: dict[str, float] = {}
    carried = 0.0  # a killed piece's time on the step it left unfinished
    lines = []
    for i, p in enumerate(pieces):
        begin = _time(p["started"])
        nxt = _time(pieces[i + 1]["started"]) if i + 1 < len(pieces) else None
        if "ended" in p:
            end, how = _time(p["ended"]), f"exited {p['rc']}"
        else:
            inside = [w for w in writes if w >= begin and (nxt is None or w < nxt)]
            end = inside[-1] if inside else begin
            how = "no end recorded (killed, or still running): taken to end at its last store write"
        mine = steps[(steps.finished_at >= begin) & (steps.finished_at <= end)]
        for j, (step, secs) in enumerate(zip(mine.step, mine.seconds)):
            totals[step] = totals.get(step, 0.0) + float(secs) + (carried if j == 0 else 0.0)
        if len(mine):
            carried = 0.0
        if "ended" not in p:
            carried += max((end - begin).total_seconds() - float(mine.seconds.sum()), 0.0)
        lines.append(f"piece {p['piece']}: {p['started']} to {end:%Y-%m-%dT%H:%M:%SZ} ({how}); "
                     f"{(end - begin).total_seconds():.0f} s, {len(mine)} step(s) finished")
    if carried:
        totals["(unfinished)"] = carried
    rows = [*totals.items(), ("sum of steps", sum(totals.values()))]
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
