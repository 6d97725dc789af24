"""How far a fresh run's figure tables are from the committed ones: the reproducibility check.

Why: a run from an empty store synthesises other embedded wavs of the same plan than the committed
results used (another dataset id: see the README's *The embedded dataset*) and retrains every network, and even
on the same wavs the thread count changes float summation order. This script
says how much that moves the published numbers, and whether any conclusion flips: for every
``<name>.csv`` present in both folders it joins the rows on their settings columns and
reports, per numeric result column, the median and largest absolute difference; for the tables that
hold a defense's ``acc_before`` / ``asr_after`` / ``acc_after`` it lists the rows that meet
the removal bar (ASR after < 20 %, ACC within 3 points: ``bdlib.budget.budget_answer``'s
defaults) in either run.

    python benchmarks/compare_figures.py build/repro/figures [--base figures] [--only REGEX]

Reads CSVs only: no store, no training.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

from bdlib.bars import keeps_acc

ASR_BAR, ACC_DROP_BAR = 0.20, 0.03


#: the columns that name a row in the collection's figure tables: settings, never a result (a unit's
#: class or a pruned count may differ between the runs), and not ``dataset`` (the runs' ids differ)
KEYS = ("profile", "model", "model_kind", "attack", "defense", "label", "method", "ablation", "value",
        "mode", "alpha", "r", "norm", "poison_rate", "target", "sample_rate", "stage", "layer", "unit", "seed",
        "victim_seed", "n_clean", "lr", "gnft.mode", "step", "snr_db", "k", "round", "pool_clip", "metric")


def key_columns(frame: pd.DataFrame) -> list[str]:
    """The columns of ``frame`` that name a row (:data:`KEYS`)."""
    return [c for c in KEYS if c in frame.columns]


def compare(base: pd.DataFrame, other: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, int, int]:
    """Rows joined on the shared key columns; per numeric result column the median / max absolute difference.

    Returns (per-column summary, joined rows, rows only in base, rows only in other)."""
    keys = [c for c in key_columns(base) if c in other.columns]
    values = [c for c in base.columns if c not in keys and c in other.columns
              and pd.api.types.is_numeric_dtype(base[c]) and pd.api.types.is_numeric_dtype(other[c])]
    joined = base.merge(other, on=keys, how="outer", suffixes=("_base", "_other"), indicator=True)
    only_base = int((joined["_merge"] == "left_only").sum())
    only_other = int((joined["_merge"] == "right_only").sum())
    both = joined[joined["_merge"] == "both"]
    rows = []
    for c in values:
        d = (both[f"{c}_other"].astype(float) - both[f"{c}_base"].astype(float)).abs().dropna()  # bools as 0/1
        if len(d):
            rows.append({"column": c, "rows": len(d), "median_abs": d.median(), "max_abs": d.max()})
    return pd.DataFrame(rows), both, only_base, only_other


def removals(joined: pd.DataFrame, side: str) -> pd.DataFrame:
    """The joined rows that meet the removal bar in run ``side`` ("base" or "other")."""
    asr, before, after = (joined[f"{c}_{side}"] for c in ("asr_after", "acc_before", "acc_after"))
    return joined[(asr < ASR_BAR) & keeps_acc(before - after, ACC_DROP_BAR)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("other", type=Path, help="a figures folder from another run")
    ap.add_argument("--base", type=Path, default=Path("figures"), help="the committed figures (default: figures)")
    ap.add_argument("--only", default="", help="regular expression on the CSV names")
    args = ap.parse_args()
    names = sorted(p.name for p in args.base.glob("*.csv")
                   if (args.other / p.name).exists() and re.search(args.only, p.name))
    if not names:
        raise SystemExit(f"no CSV of {args.base} is also in {args.other}")
    for name in names:
        base, other = pd.read_csv(args.base / name), pd.read_csv(args.other / name)
        summary, joined, only_base, only_other = compare(base, other)
        print(f"\n== {name}: {len(joined)} rows in both, {only_base} only in {args.base}, {only_other} only in {args.other}")
        if "dataset" in base and "dataset" in other and set(base.dataset) != set(other.dataset):
            print(f"   data sets differ: {sorted(set(base.dataset))} against {sorted(set(other.dataset))}")
        if len(summary):
            print(summary.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
        if {"asr_after_base", "acc_before_base", "acc_after_base"} <= set(joined.columns):
            for side, folder in (("base", args.base), ("other", args.other)):
                hit = removals(joined, side)
                label = ", ".join(" / ".join(str(r[k]) for k in ("attack", "defense") if k in r) for _, r in hit.iterrows())
                print(f"   meet the removal bar in {folder}: {len(hit)}{': ' + label if label else ''}")


if __name__ == "__main__":
    main()
