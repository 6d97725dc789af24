"""The poisoning-rate ablation (notebook 43, issue 12): FT and GN-FT against victims poisoned
at 0.5–10 % of their training clips.

Why: the GN-FT paper (arXiv 2502.01152, Sec. 4.1) poisons 10 % of the training set, and so does
every victim of this collection (``Profile.poison_rate``). The speech-element attacks were
published at far lower rates: PBSM (Cai et al. 2022, arXiv 2211.08697) reports an average ASR
close to 90 % on three victim models and VSVC (Cai et al. 2022, arXiv 2212.10103) close to 97 %
on four, both "when poisoning less than 1 % of the training data" (their abstracts; the
per-experiment rates of their tables were not available to this project). A backdoor planted
by fewer clips may be shallower, and easier to fine-tune away, or not: this grid asks, at 0.5,
1, 2, 5 and 10 % (:data:`RATES`), for BadNets and for PBSM and VSVC at their papers' rates.
The default profile's committed run takes 0.5, 2 and 10 % (three seeds each) to fit a 2-core
machine (estimated: 18 new victims of ≈ 70–125 s and 54 new defense runs of 10–25 s).

The grid (:data:`GRIDS`, per profile): rates, attacks (each with the knobs its attack notebook
trains with, ``Profile.attack_knobs``) and seeds. The defenses (:func:`methods`): FT as
BackdoorBench runs it (notebook 20's setting), FT at GN-FT's optimiser
(:func:`bdlib.study.matched_ft_knobs`: the fair row next to GN-FT) and GN-FT approx (notebook
21's setting). Everything is a :class:`bdlib.study.Study` (``rates=``), so the 10 % victims
and their runs are the collection's own (one store entry each), and a rate is a column of the
tidy table (``poison_rate``).

A rate is a count of clips: round(rate × training clips), drawn from the non-target clips
(dirty label), e.g. 8 at 0.5 % of the default set's 1 600 and 3 at 1 % of the smoke set's 320
(:func:`poisoned_counts` reads them back from the victims).
"""
from __future__ import annotations

import pandas as pd

from .bars import keeps_acc
from .profiles import Profile, get_profile
from .study import NOT_APPLICABLE, NOTEBOOK_DEFENSES, Study, matched_ft_knobs, mean_sd

#: the issue's rates: 0.5 % to 10 % (10 %: the profile's, the GN-FT paper's)
RATES = (0.005, 0.01, 0.02, 0.05, 0.1)

#: per profile: rates, attacks and seeds (any other profile: the default's grid on its own data)
GRIDS: dict[str, dict] = {
    # CI (nbval, one core): two rates, one attack, one seed; the 10 % victim and its FT / GN-FT runs are
    # notebook 10's, 20's and 21's
    "smoke": {"rates": (0.01, 0.1), "attacks": ("badnets",), "seeds": (0,)},
    # the committed CPU run (2 cores): 0.5, 2 and 10 % span the range in three points; 27 victims of which
    # the 9 at 10 % are the collection's. ``rates=RATES`` (notebook parameter) runs all five on a bigger machine.
    "default": {"rates": (0.005, 0.02, 0.1), "attacks": ("badnets", "pbsm", "vsvc"), "seeds": (0, 1, 2)},
}

NO_DEFENSE = "no defense"
FT_BACKDOORBENCH = "FT (BackdoorBench)"
FT_MATCHED = "FT at GN-FT's optimiser"
GNFT_APPROX = "GN-FT (approx)"


def grid_for(profile: str | Profile) -> dict:
    """The grid of ``profile`` (:data:`GRIDS`; the default's for a profile without its own)."""
    name = get_profile(profile).name
    return dict(GRIDS.get(name, GRIDS["default"]))


def methods() -> dict[str, tuple[str, dict]]:
    """method name -> (registry name, knobs): FT at notebook 20's (BackdoorBench's) setting, FT at
    GN-FT's optimiser and GN-FT approx at notebook 21's."""
    gnft = next(k for k in NOTEBOOK_DEFENSES["gnft"] if k["mode"] == "approx")
    return {FT_BACKDOORBENCH: ("ft", dict(NOTEBOOK_DEFENSES["ft"])),
            FT_MATCHED: ("ft", matched_ft_knobs(gnft)),
            GNFT_APPROX: ("gnft", dict(gnft))}


def study_defenses() -> dict[str, list[dict]]:
    """:func:`methods` as :class:`~bdlib.study.Study` defenses (registry name -> knob dicts)."""
    out: dict[str, list[dict]] = {}
    for defense, knobs in methods().values():
        out.setdefault(defense, []).append(knobs)
    return out


def rate_study(profile: str | Profile = "default", rates=None, attacks=None, seeds=None, seed: int = 0,
               **study_kwargs) -> Study:
    """The ablation's :class:`~bdlib.study.Study`: every attack of the grid, poisoned at every
    rate, defended by every method of :func:`methods`, once per seed; no clean model.
    ``None`` takes the profile's grid (:func:`grid_for`); the grid's seeds are shifted by
    ``seed`` (``bdlib run --seed N``). ``study_kwargs``: models, dataset, dataset_root, target, ..."""
    grid = grid_for(profile)
    seeds = tuple(s + seed for s in grid["seeds"]) if seeds is None else tuple(seeds)
    study_kwargs.setdefault("include_clean", False)
    return Study(profile, attacks=list(grid["attacks"] if attacks is None else attacks), seeds=seeds,
                 rates=tuple(grid["rates"] if rates is None else rates), defenses=study_defenses(), **study_kwargs)


def notebook_study(profile: str | Profile = "default", seed: int = 0, seeds=None, rates=None, attacks=None,
                   models=None, **study_kwargs) -> Study:
    """Notebook 43's :func:`rate_study` from its parameters; ``models``: ``None`` for the
    profile's. ``study_kwargs``: dataset, dataset_root, target, device. ``python -m bdlib run``
    computes the same study before the notebook (:mod:`bdlib.plan`)."""
    if models:
        study_kwargs["models"] = tuple(models)
    return rate_study(profile, rates=rates, attacks=attacks, seeds=seeds, seed=seed, **study_kwargs)


def _method(table: pd.DataFrame) -> pd.Series:
    """Each row's method name, by its defense and knob columns (``defense.<knob>``)."""
    out = pd.Series(pd.NA, index=table.index, dtype=object)
    out[table["label"].isin([NO_DEFENSE, "none"])] = NO_DEFENSE
    for name, (defense, knobs) in methods().items():
        hit = table["defense"].eq(defense)
        for k, v in knobs.items():
            hit &= table.get(f"defense.{k}", pd.Series(pd.NA, index=table.index)).eq(v)
        clash = hit & out.notna()
        if clash.any():
            raise ValueError(f"rows match two methods ({out[clash].iloc[0]!r} and {name!r}): make their knobs differ")
        out[hit] = name
    if out.isna().any():
        raise ValueError(f"{int(out.isna().sum())} rows match no method of bdlib.poison_rate.methods() (e.g. label "
                         f"{table.loc[out.isna(), 'label'].iloc[0]!r}): not this ablation's study table")
    return out


def rate_rows(study_table: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, attack, rate, method, seed): the undefended victim (``no defense``,
    its ASR/ACC as "after") and each defense run, with ASR/ACC before and after and ``status``
    (a refused run keeps its row, NaN after). Sorted by model, attack, rate, method, seed."""
    from .tables import NO_DEFENSE as TABLES_NO_DEFENSE, per_seed

    rows = per_seed(study_table)
    rows = rows.assign(label=rows["label"].replace(TABLES_NO_DEFENSE, NO_DEFENSE))
    rows = rows.assign(method=_method(rows))
    order = {m: i for i, m in enumerate([NO_DEFENSE, *methods()])}
    cols = ["model", "attack", "poison_rate", "method", "seed", "asr_before", "acc_before", "asr_after", "acc_after"]
    cols += [c for c in ("status", "reason") if c in rows]
    return (rows[cols].assign(_order=rows["method"].map(order))
            .sort_values(["model", "attack", "poison_rate", "_order", "seed"]).drop(columns="_order")
            .reset_index(drop=True))


def rate_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean, sd and n over seeds of ASR and ACC after, per (model, attack, rate, method)
    (:func:`bdlib.study.mean_sd`; a refused method says so in ``status``)."""
    out = mean_sd(rows, ["model", "attack", "poison_rate", "method"], ["asr_after", "acc_after"])
    order = {m: i for i, m in enumerate([NO_DEFENSE, *methods()])}
    return (out.assign(_order=out["method"].map(order)).sort_values(["model", "attack", "poison_rate", "_order"])
            .drop(columns="_order").reset_index(drop=True))


def rate_bar(rows: pd.DataFrame, asr_bar: float = 0.2, acc_drop: float = 0.03) -> pd.DataFrame:
    """Per (model, attack, rate, defense method): whether, on the mean over seeds, it removes
    the backdoor (ASR after <= ``asr_bar``) and keeps clean accuracy (victim's ACC − ACC after
    <= ``acc_drop``, to 1e-9) — the bar of :func:`bdlib.tables.passes_bar`, per rate. A coarse,
    deterministic summary; a refused method never passes."""
    runs = rows[rows["method"].ne(NO_DEFENSE)]
    keys = ["model", "attack", "poison_rate", "method"]
    out = runs.groupby(keys, sort=False)[["asr_after", "acc_before", "acc_after"]].mean().reset_index()
    out["acc_drop"] = out["acc_before"] - out["acc_after"]
    out["passes"] = (out["asr_after"] <= asr_bar) & keeps_acc(out["acc_drop"], acc_drop)
    return out


def _cell(mean, sd, n, decimals: int) -> str:
    if pd.isna(mean):
        return "–"
    return f"{mean * 100:.{decimals}f}" + (f" ± {sd * 100:.{decimals}f}" if n > 1 else f" (n={n})")


def rate_frame(summary: pd.DataFrame, decimals: int = 1) -> pd.DataFrame:
    """The summary as the notebook shows it: rows (model, attack, rate in %), columns method ×
    {ASR, ACC} after, each "mean ± sd" in % (n = 1: "(n=1)"; refused: "n/a")."""
    s = summary.copy()
    s["rate %"] = (s["poison_rate"] * 100).round(2)
    refused = s["status"].eq(NOT_APPLICABLE) if "status" in s else pd.Series(False, index=s.index)
    for m, head in (("asr", "ASR"), ("acc", "ACC")):
        s[head] = [("n/a" if r else _cell(a, b, n, decimals))
                   for a, b, n, r in zip(s[f"{m}_after_mean"], s[f"{m}_after_sd"], s[f"{m}_after_n"], refused)]
    wide = s.pivot(index=["model", "attack", "rate %"], columns="method", values=["ASR", "ACC"])
    order = [m for m in [NO_DEFENSE, *methods()] if m in set(s["method"])]
    cols = [(metric, m) for m in order for metric in ("ASR", "ACC")]
    wide = wide[cols]
    wide.columns = pd.MultiIndex.from_tuples([(m, metric) for metric, m in cols])
    return wide


def poisoned_counts(study: Study) -> pd.DataFrame:
    """Poisoned and training clips of every victim the study last ran (``Study.run``), by model,
    attack, seed and rate."""
    if not getattr(study, "last_run", None):
        raise ValueError("run the study first (Study.run): the counts come from its victims' records")
    rows = []
    for cell, rec in zip(study.victim_cells(), study.last_run["victims"]):
        if cell.attack is None:
            continue
        m = rec["metrics"]
        rows.append({"model": cell.model, "attack": cell.attack, "seed": cell.seed,
                     "poison_rate": rec["config"]["poison_rate"], "n_poisoned": m["n_poisoned"],
                     "n_train": m["n_train"]})
    return pd.DataFrame(rows)


__all__ = ["FT_BACKDOORBENCH", "FT_MATCHED", "GNFT_APPROX", "GRIDS", "NO_DEFENSE", "RATES", "grid_for", "methods",
           "notebook_study",
           "poisoned_counts", "rate_bar", "rate_frame", "rate_rows", "rate_study", "rate_summary", "study_defenses"]
