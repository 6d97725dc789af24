"""Budget curves read back for a reader: each setting at its last checkpoint, the answer in words,
and the committed full slices.

Why a module of its own: :mod:`bdlib.budget`'s source is fingerprinted into every stored curve's
key, so a change to how results are *shown* there would recompute hours of curves. This module only
reads tables (:func:`bdlib.budget.budget_table`'s, or a committed ``figures/<name>.csv``).

Why the committed slices are read back (notebooks 41, 44 and 45): their full slices take ≈ 11, ≈ 8
and ≈ 2.6 (per attack) CPU-hours on the 2-core machine, too long for a default ``make reproduce``.
A plain run of 41 or 44 computes a small default grid (45 computes nothing on the default profile);
the full slices' curves are committed as CSV (the figure is drawn from it) and the notebooks summarise
that file, so the prose about the full slice sits beside its numbers.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .budget import budget_answer, budget_summary
from .figures import read_table
from .paths import REPO_ROOT

SETTING = ["model", "attack", "n_clean", "lr"]


def last_checkpoint(table: pd.DataFrame) -> pd.DataFrame:
    """The rows at each setting's last evaluated step (settings may stop at different steps)."""
    return table[table.step == table.groupby(SETTING).step.transform("max")]


def at_end(table: pd.DataFrame) -> pd.DataFrame:
    """Mean ± sd of ASR and ACC over seeds at each setting's last checkpoint, one row per
    (model, attack, n, lr, step, method), with each seed's ASR beside it: nothing averaged
    across settings."""
    last = last_checkpoint(table)
    per_seed = (last.pivot_table(index=SETTING + ["step", "method"], columns="seed", values="asr", aggfunc="first")
                .round(3).add_prefix("asr seed "))
    summary = budget_summary(table).merge(last[SETTING + ["step"]].drop_duplicates())
    cols = ["asr_mean", "asr_sd", "acc_mean", "acc_sd", "acc_drop_mean"]
    return summary.set_index(SETTING + ["step", "method"])[cols].round(3).join(per_seed).sort_index()


def answer_text(table: pd.DataFrame, asr_bar: float = 0.20, acc_drop_bar: float = 0.03) -> str:
    """:func:`bdlib.budget.budget_answer` in words: the settings where a method removes the
    backdoor, and those where GN-FT beats FT (paired over seeds, > 2 SE), or "none"."""
    answer = budget_answer(table, asr_bar=asr_bar, acc_drop_bar=acc_drop_bar)
    removes, better = answer["removes"], answer["gnft_better"]
    lines = [f"settings where a method removes the backdoor (ASR < {asr_bar:.0%}, ACC drop <= {acc_drop_bar:.0%}): "
             + ("none" if removes.empty else "")]
    if not removes.empty:
        cols = ["attack", "model", "method", "n_clean", "lr", "step", "asr_mean", "asr_sd", "acc_drop_mean"]
        lines.append(removes[cols].round(3).to_string(index=False))
    lines.append("settings where GN-FT beats FT (paired, > 2 SE): " + ("none" if better.empty else ""))
    if not better.empty:
        lines.append(better.round(3).to_string(index=False))
    return "\n".join(lines)


def committed(name: str, folder: Path | None = None) -> pd.DataFrame:
    """The committed curves of figure ``name`` (``figures/<name>.csv``), as written by
    :func:`bdlib.figures.publish`."""
    path = (folder or REPO_ROOT / "figures") / f"{name}.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no committed curves named {name!r} (the repository's figures/ holds them; "
                                f"its notebook writes them on the default profile with its recomputing grid: "
                                f"grid='full' in notebooks 41 and 44, grid='long' in notebook 45)")
    return read_table(path)


__all__ = ["answer_text", "at_end", "committed", "last_checkpoint"]
