"""Wall time of the collection's grid (every defense × every victim of a profile) from an
empty store, serial vs the Dask local cluster, and where the time goes.

Why: the grid is the expensive part of ``make reproduce``; this measures what running its
independent cells on Dask buys on this machine. Each mode gets its own empty store (the
embedded wavs are shared: they are data, not artifacts), so both compute everything.
The breakdown sums the times the store records: victim training, attack fits, triggered
test sets, and each defense; "other" is the rest of the wall time (data loading, feature
extraction, evaluation, process start-up; on Dask also idle cores at the end of the grid).

    python benchmarks/study_grid.py --profile smoke [--modes serial dask] [--seeds 0]
    python benchmarks/study_grid.py --profile default --seeds 0 --from-store data/store   # no runs

A timing is machine-dependent: quote it with the machine's cores.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path


def _run_mode(mode: str, profile: str, seeds: list[int], data: Path, embedded: Path) -> float:
    """One grid in a fresh process (its own store); returns the wall time."""
    code = ("import sys, time; from bdlib.study import collection_study; "
            f"s = collection_study({profile!r}, seeds={seeds!r}, dataset_root={str(embedded)!r}); "
            f"t = time.perf_counter(); s.run(serial={mode == 'serial'!r}, progress=False); "
            "print('WALL', time.perf_counter() - t)")
    from bdlib.allocator import with_allocator_env

    env = with_allocator_env({**os.environ, "BDLIB_DATA": str(data)})  # both modes: the settings `make` exports
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{mode} run failed:\n{out.stderr[-3000:]}")
    return float(out.stdout.split("WALL")[-1])


def breakdown(store: Path, seeds: list[int] | None = None, dataset: str | None = None) -> dict[str, float]:
    """Seconds the store's artifacts record, by phase (defenses by registry name and mode).
    ``seeds`` / ``dataset``: only the entries of those seeds and that data set id (a store
    shared with other studies); ``None``: every entry."""
    out: dict[str, float] = defaultdict(float)

    def wanted(config: dict) -> bool:
        where = config.get("victim", config)  # a defense's seed and data set are its victim's
        return (seeds is None or where.get("seed") in seeds) and (dataset is None or where.get("dataset") == dataset)

    for kind, field, label in (("models", "train_time_s", "victims"), ("surrogates", None, "surrogates"),
                               ("attack_fits", "fit_time_s", "attack fits"), ("triggered", "time_s", "triggered sets")):
        for d in (store / kind).glob("[!.]*"):
            if not wanted(json.loads((d / "config.json").read_text())):
                continue
            m = json.loads((d / "metrics.json").read_text())
            out[label] += float(m.get(field) or 0.0) if field else 0.0
    for d in (store / "defenses").glob("[!.]*"):
        c, m = json.loads((d / "config.json").read_text()), json.loads((d / "metrics.json").read_text())
        if not wanted(c):
            continue
        mode = c["defense_knobs"].get("mode")
        out[f"defense {c['defense']}{'-' + mode if mode else ''}"] += float(m["time_s"])
    return dict(out)


def _print_parts(parts: dict[str, float]) -> None:
    for name, secs in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"  {name:24s} {secs:8.1f} s")
    print(f"  {'sum of recorded':24s} {sum(parts.values()):8.1f} s  (cpu-seconds of cells; on Dask they overlap)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--modes", nargs="+", default=["serial", "dask"], choices=["serial", "dask"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--from-store", type=Path, metavar="STORE",
                    help="compute nothing: print where the time went in an existing store (its entries of the "
                         "profile's data set and these seeds), e.g. data/store after a notebook or study run")
    args = ap.parse_args()
    from bdlib.paths import data_root
    from bdlib.study import collection_study

    embedded = data_root() / "embedded"
    study = collection_study(args.profile, seeds=args.seeds, dataset_root=embedded)
    print(f"grid: profile {args.profile}, seeds {args.seeds}: {len(study.victim_cells())} victim cells, "
          f"{len(study.defense_cells())} defense cells; {os.cpu_count()} cores; "
          f"BDLIB_WORKERS={os.environ.get('BDLIB_WORKERS', '(cores)')}")
    if args.from_store is not None:
        dataset = study.victim_cells()[0].experiment().dataset_id
        print(f"recorded in {args.from_store} for data set {dataset}:")
        _print_parts(breakdown(args.from_store, seeds=args.seeds, dataset=dataset))
        return
    study.victim_cells()[0].experiment().manifest  # synthesise the embedded set once, outside the timings
    results = {}
    for mode in args.modes:
        with tempfile.TemporaryDirectory(prefix=f"grid-{mode}-") as tmp:
            t0 = time.perf_counter()
            wall = _run_mode(mode, args.profile, args.seeds, Path(tmp), embedded)
            results[mode] = (wall, time.perf_counter() - t0, breakdown(Path(tmp) / "store"))
    for mode, (wall, total, parts) in results.items():
        print(f"\n{mode}: grid {wall:.1f} s (process incl. imports {total:.1f} s)")
        _print_parts(parts)
    if {"serial", "dask"} <= set(results):
        print(f"\nspeed-up Dask vs serial: {results['serial'][0] / results['dask'][0]:.2f}x")


if __name__ == "__main__":
    main()
