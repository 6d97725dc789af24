"""Wall time of a whole ``python -m bdlib run`` (what ``make reproduce`` calls) from an empty
store, serially and on the Dask local cluster, step by step.

Why (issue 12: "``make reproduce`` from an empty store: report its wall time, serial and with
the Dask local cluster, per notebook"): since the run computes every notebook's cells before
the notebooks (bdlib/plan.py), the mode decides how almost all of the run's work is spread.
Each mode runs in a fresh process with its own empty ``BDLIB_DATA`` (the embedded wavs copied
in: they are data, not artifacts, and the synthesis is the same in both) and ``make``'s malloc
settings; the notebooks go to a scratch folder, and the repository's ``figures/`` (where a
default-profile run publishes) is put back as it was afterwards. The table is read from each run's timings
record (bdlib/timings.py): one row per step, the cells part by part when serial, as one step on
Dask.

    python benchmarks/reproduce_modes.py --profile smoke [--modes serial dask2] [--keep DIR]
    python benchmarks/reproduce_modes.py --profile default --only '^41_'   # one notebook and its cells

``serial``: ``--serial`` (the default below 8 cores); ``dask2``: ``BDLIB_WORKERS=2`` (2 workers ×
cores/2 torch threads); ``daskN`` likewise. A timing is machine-dependent: quote it with the
machine's cores.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def mode_env(mode: str) -> tuple[list[str], dict]:
    if mode == "serial":
        return ["--serial"], {}
    m = re.fullmatch(r"dask(\d+)", mode)
    if not m or int(m.group(1)) < 2:
        raise SystemExit(f"mode {mode!r}: use serial or daskN with N >= 2 workers (one worker runs serially)")
    return [], {"BDLIB_WORKERS": m.group(1)}


def run_mode(mode: str, profile: str, data: Path, embedded: Path | None, only: str | None = None
             ) -> tuple[float, "object"]:
    """One ``bdlib run`` in a fresh process on an empty store; (wall seconds, its timings table)."""
    from bdlib.allocator import with_allocator_env
    from bdlib.timings import read_timings, timings_path

    data.mkdir(parents=True)
    if embedded is not None:
        shutil.copytree(embedded, data / "embedded")
    args, extra = mode_env(mode)
    env = with_allocator_env({**os.environ, "BDLIB_DATA": str(data), **extra})
    cmd = [sys.executable, "-m", "bdlib", "run", "--profile", profile, "--output-dir", str(data / "notebooks"), *args,
           *(["--only", only] if only else [])]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (data / "run.log").write_text(out.stdout + out.stderr)
    if out.returncode:
        sys.exit(f"{mode}: `{' '.join(cmd)}` failed (exit {out.returncode}); log: {data / 'run.log'}\n"
                 f"{out.stderr[-2000:]}")
    return wall, read_timings(timings_path(data))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--modes", nargs="+", default=["serial", "dask2"])
    ap.add_argument("--embedded", type=Path, help="a folder of embedded sets to copy into each empty data folder "
                                                  "(default: $BDLIB_DATA/embedded, or the repository's data/embedded)")
    ap.add_argument("--only", help="a regular expression: these notebooks and their cells only (bdlib run --only)")
    ap.add_argument("--keep", type=Path, help="keep each mode's data folder under this folder (default: removed)")
    a = ap.parse_args()
    import pandas as pd

    from bdlib.paths import data_root

    for mode in a.modes:
        mode_env(mode)  # a bad mode fails before anything runs
    embedded = a.embedded or data_root() / "embedded"
    embedded = embedded if embedded.is_dir() else None
    base = Path(tempfile.mkdtemp(prefix="bdlib-modes-", dir=a.keep))
    print(f"{os.cpu_count()} cores; profile {a.profile}; embedded wavs "
          f"{'copied from ' + str(embedded) if embedded else 'synthesised by each run'}; data folders under {base}")
    tables, walls = {}, {}
    # a default-profile run publishes into the repository's figures/ (bdlib.paths.figure_path): keep the
    # committed ones as they were (these runs train with other thread counts; their numbers are timings' by-products)
    figures, saved = REPO / "figures", base / "figures.saved"
    shutil.copytree(figures, saved)
    try:
        for mode in a.modes:
            walls[mode], t = run_mode(mode, a.profile, base / mode, embedded, a.only)
            tables[mode] = t.set_index("step")["seconds"]
            print(f"{mode}: {walls[mode]:.1f} s wall", flush=True)
    finally:
        shutil.rmtree(figures)
        shutil.copytree(saved, figures)
        if a.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    seen = list(dict.fromkeys(step for t in tables.values() for step in t.index))
    order = sorted(seen, key=lambda step: (not step.startswith("cells:"), seen.index(step)))  # cells, then notebooks
    table = pd.DataFrame(tables).reindex(order)
    table.loc["sum of steps"] = table.sum()
    table.loc["process wall time"] = pd.Series(walls)
    print(table.round(1).astype(object).where(table.notna(), "").to_string())


if __name__ == "__main__":
    main()
