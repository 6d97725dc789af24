"""GN-FT's ablations (notebook 42): α and r, exact vs approximate, per-tensor vs global norm,
and the authors' optional post-fine-tuning pruning stage — one factor at a time around the
authors' own setting, mean ± sd over seeds.

Why one factor at a time: GN-FT's knobs are the step ``r`` of the finite-difference
perturbation, the mixing weight ``α`` (together the penalty λ = α·r of Eq. 3), the form of the
gradient (``mode``: the authors' two-pass approximation or the exact gradient of Eq. 3), how
the gradient is normalised (``norm``: per tensor, as the authors, or one global norm) and
whether the authors' pruning stage follows (``gnft_prune``). A full product of them is
3 × 3 × 2 × 2 × 2 = 72 settings per victim and seed; varying each around the **centre** — the
authors' ``ft_reg.py`` defaults, r = 0.05, α = 0.7, per-tensor, SGD lr 1e-3 (momentum 0.9,
batch 256: :class:`bdlib.defenses.gnft.GNFTConfig`) — needs 1 + Σ (values − 1) settings, and
every row differs from the centre in one knob only. The centre runs **once** and belongs to
every ablation.

Everything here is data plus three steps:

* :data:`GRIDS` — per profile, the attacks, the seeds and the values of each factor;
  :func:`grid_for` picks one by profile name.
* :func:`ofat_settings` expands the values to settings (the centre first, once; a value listed
  twice raises), :func:`ablation_study` makes them a :class:`bdlib.study.Study`, and
  :func:`run_ablation` runs it and adds the pruning stage's report (ratio kept, units pruned).
* :func:`ablation_rows` labels each row of the study's table with the ablation(s) it belongs to
  and its knob columns; :func:`summarise`, :func:`vs_centre` and :func:`exact_vs_approx` reduce
  them over seeds only — rows that share a setting *and* a seed raise
  (:class:`bdlib.study.DuplicateCellsError`), and no two settings are ever averaged together.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from .study import DuplicateCellsError, Study, mean_sd, pivot

#: the factors varied, in the order the notebook shows them; ``defense``: ``gnft`` or
#: ``gnft_prune`` (GN-FT followed by the authors' pruning stage), at identical GN-FT knobs
FACTORS: tuple[str, ...] = ("alpha", "r", "mode", "norm", "defense")
#: the defenses the ablation compares
ABLATED: tuple[str, ...] = ("gnft", "gnft_prune")
#: the centre of every sweep: the authors' ft_reg.py defaults (GNFTConfig's own defaults)
CENTRE: dict = {"defense": "gnft", "mode": "approx", "alpha": 0.7, "r": 0.05, "norm": "per_tensor", "lr": 1e-3}
#: what the notebook calls each ablation
TITLES: dict[str, str] = {"alpha": "α (r fixed)", "r": "r (α fixed)", "mode": "exact vs approx",
                          "norm": "per-tensor vs global norm", "defense": "pruning stage"}

#: the sweeps per profile: attacks, seeds, and each factor's values (the centre's value may be
#: listed or not: the centre runs once). ``smoke``: CI's (nbval, ≤ 40 s beyond the store);
#: ``default``: the committed run (19 min on 2 CPU cores with notebook 50's runs stored, see notebook 42)
GRIDS: dict[str, dict] = {
    "smoke": {"attacks": ("badnets",), "seeds": (0, 1), "alpha": (0.3, 0.7), "r": (0.01, 0.05),
              "mode": ("approx", "exact"), "norm": ("per_tensor", "global"), "defense": ("gnft", "gnft_prune")},
    "default": {"attacks": ("badnets", "blended", "jingleback"), "seeds": (0, 1, 2), "alpha": (0.3, 0.7, 0.9),
                "r": (0.01, 0.05, 0.1), "mode": ("approx", "exact"), "norm": ("per_tensor", "global"),
                "defense": ("gnft", "gnft_prune")},
}


def grid_for(profile: str) -> dict:
    """The sweep of a profile: ``smoke``'s under the smoke profile, ``default``'s under every
    other (a copy: edit it freely)."""
    return dict(GRIDS["smoke" if profile == "smoke" else "default"])


def resolve_grid(profile: str, grid: str | None = None, seed: int = 0, seeds=None, attacks=None, alpha=None,
                 r=None, mode=None, norm=None, pruning: bool | None = None) -> dict:
    """A notebook's sweep: :data:`GRIDS` ``[grid]`` (``None``: :func:`grid_for` the profile) with
    every argument that is not ``None`` replacing the grid's; ``pruning=False`` drops the
    pruning stage, ``True`` keeps it. Without ``seeds`` the grid's seeds are shifted by ``seed``
    (``bdlib run --seed N``)."""
    g = dict(GRIDS[grid]) if grid is not None else grid_for(profile)
    given = {"attacks": attacks, "seeds": seeds, "alpha": alpha, "r": r, "mode": mode, "norm": norm}
    g.update({k: tuple(v) for k, v in given.items() if v is not None})
    if pruning is not None:
        g["defense"] = ABLATED if pruning else ("gnft",)
    if seeds is None:
        g["seeds"] = tuple(s + seed for s in g["seeds"])
    return g


@dataclass(frozen=True)
class Setting:
    """One defense setting of the sweep: the registry name, its knobs (sorted pairs), and the
    ablations it belongs to (the centre: all of them)."""

    defense: str
    knobs: tuple
    ablations: tuple[str, ...]

    @property
    def factors(self) -> dict:
        return {"defense": self.defense, **dict(self.knobs)}


def _check_values(factor: str, values) -> tuple:
    if factor not in FACTORS:
        raise ValueError(f"unknown GN-FT ablation factor {factor!r}; valid: {', '.join(FACTORS)}")
    if isinstance(values, (str, int, float)) or not len(values):
        raise TypeError(f"{factor}: give a non-empty list of values, got {values!r}")
    seen = []
    for v in values:
        if v in seen:
            raise ValueError(f"{factor}: value {v!r} is listed twice; each setting runs once")
        seen.append(v)
    return tuple(values)


def ofat_settings(values: dict[str, Sequence], centre: dict | None = None) -> list[Setting]:
    """One factor at a time around ``centre`` (:data:`CENTRE`, updated with what ``centre``
    gives): the centre first, then,
    per factor in :data:`FACTORS` order, every value other than the centre's. A factor not in
    ``values`` stays at the centre. A value listed twice raises; every knob set is checked by
    building the defense (an out-of-range α fails here, before anything runs)."""
    from .defenses import make_defense

    centre = {**CENTRE, **(centre or {})}
    if centre["defense"] not in ABLATED:
        raise ValueError(f"the centre's defense must be one of {', '.join(ABLATED)}, got {centre['defense']!r}")
    unknown = sorted(set(values) - set(FACTORS))
    if unknown:
        raise ValueError(f"unknown GN-FT ablation factor(s) {', '.join(map(repr, unknown))}; "
                         f"valid: {', '.join(FACTORS)}")
    swept = {f: _check_values(f, values[f]) for f in FACTORS if f in values}

    def setting(factors: dict, ablations: tuple) -> Setting:
        knobs = {k: v for k, v in factors.items() if k != "defense"}
        make_defense(factors["defense"], **knobs)  # validates names and ranges now
        return Setting(factors["defense"], tuple(sorted(knobs.items())), ablations)

    out = [setting(centre, tuple(f for f in swept if len(set(swept[f]) | {centre[f]}) > 1))]
    for f, vals in swept.items():
        for v in vals:
            if v != centre[f]:
                out.append(setting({**centre, f: v}, (f,)))
    return out


def settings_frame(settings: list[Setting]) -> pd.DataFrame:
    """The settings as a table: one row each, its ablations, λ = α·r and every knob given."""
    rows = [{"ablations": ", ".join(s.ablations), **s.factors} for s in settings]
    out = pd.DataFrame(rows)
    if {"alpha", "r"} <= set(out):
        out.insert(out.columns.get_loc("r") + 1, "lam", (out["alpha"] * out["r"]).round(12))
    return out


def study_defenses(settings: list[Setting]) -> dict[str, list[dict]]:
    """The settings as :class:`~bdlib.study.Study` defenses: registry name -> list of knob dicts.
    Two settings with the same knobs raise (the same run twice)."""
    out: dict[str, list[dict]] = {}
    for s in settings:
        knobs = dict(s.knobs)
        if knobs in out.get(s.defense, []):
            raise ValueError(f"setting {s.defense} {knobs} appears twice")
        out.setdefault(s.defense, []).append(knobs)
    return out


def ablation_study(profile, attacks: Sequence[str], seeds: Sequence[int], values: dict[str, Sequence],
                   centre: dict | None = None, **study_kwargs) -> Study:
    """The :class:`~bdlib.study.Study` of the sweep: every setting of :func:`ofat_settings` on
    every attack's victim (the profile's attack knobs) and seed; no clean model
    (``include_clean=False``). ``study_kwargs``: models, dataset, dataset_root, target, ..."""
    study_kwargs.setdefault("include_clean", False)
    return Study(profile, attacks=list(attacks), seeds=tuple(seeds),
                 defenses=study_defenses(ofat_settings(values, centre)), **study_kwargs)


def notebook_study(profile, grid: str | None = None, seed: int = 0, seeds=None, attacks=None, alphas=None, rs=None,
                   modes=None, norms=None, pruning: bool | None = None, centre: dict | None = None, models=None,
                   **study_kwargs) -> tuple[dict, Study]:
    """Notebook 42's sweep from its parameters: the resolved grid (:func:`resolve_grid`) and its
    study (:func:`ablation_study`). ``models``: ``None`` for the profile's; ``study_kwargs``:
    dataset, dataset_root, target, device. ``python -m bdlib run`` computes the same study
    before the notebook (:mod:`bdlib.plan`)."""
    g = resolve_grid(profile, grid, seed, seeds, attacks, alphas, rs, modes, norms, pruning)
    if models:
        study_kwargs["models"] = tuple(models)
    return g, ablation_study(profile, g["attacks"], g["seeds"], {f: g[f] for f in FACTORS}, centre, **study_kwargs)


PRUNE_COLUMNS = ("prune.selected_ratio", "prune.n_pruned", "prune.n_units")


def run_ablation(study: Study, serial: bool | None = True, progress: bool = False) -> pd.DataFrame:
    """Run the study (missing cells are computed, stored ones read back) and return its table
    with the pruning stage's report as columns (``prune.selected_ratio``, ``prune.n_pruned``,
    ``prune.n_units``; empty for GN-FT alone)."""
    from .pipeline import defense_label

    table = study.run(serial=serial, progress=progress)
    report = []
    for cell, rec in zip(study.defense_cells(), study.last_run["defenses"]):
        r = (rec.get("metrics") or {}).get("report") or {}  # a refused cell (not applicable) has no metrics
        if "selected_ratio" in r:
            report.append({"model": cell.victim.model, "attack": cell.victim.attack, "seed": cell.victim.seed,
                           "label": defense_label(rec["config"]), "prune.selected_ratio": r["selected_ratio"],
                           "prune.n_pruned": r["n_pruned"], "prune.n_units": r["n_units"]})
    if not report:
        return table.assign(**{c: np.nan for c in PRUNE_COLUMNS})
    return table.merge(pd.DataFrame(report), on=["model", "attack", "seed", "label"], how="left", validate="m:1")


# --- the tidy frames -----------------------------------------------------------------------
SHOWN = ("defense", "mode", "alpha", "r", "lam", "norm")
VICTIM = ("dataset", "model", "attack")
METRICS = ("asr_before", "acc_before", "asr_after", "acc_after", "ra_after", "der", "time_s")


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, (float, np.floating)) else str(v)


def _victim(rows: pd.DataFrame) -> list[str]:
    """The columns that name a victim: dataset, model, attack, plus the poisoning rate and
    attack knobs where they vary within ``rows`` (a study over several rates)."""
    extra = [c for c in rows.columns if (c == "poison_rate" or c.startswith("attack."))
             and rows[c].nunique(dropna=False) > 1]
    return [c for c in VICTIM if c in rows] + extra


def _knob_columns(rows: pd.DataFrame) -> list[str]:
    return [c for c in rows.columns if c.startswith("defense.")]


def _key(rows: pd.DataFrame) -> list[str]:
    """What makes a row one run: the ablation, the victim (with its poisoning rate and attack
    knobs, where the table has them), every knob and the seed."""
    victim = [c for c in (*VICTIM, "poison_rate") if c in rows] + [c for c in rows.columns if c.startswith("attack.")]
    return ["ablation", *victim, *SHOWN, *_knob_columns(rows), "seed"]


def check_one_run_per_seed(rows: pd.DataFrame) -> None:
    """Raise :class:`~bdlib.study.DuplicateCellsError` when two rows share an ablation, a victim,
    every knob and the seed: averaging them would count one run twice (or hide a difference
    the knob columns do not show)."""
    key = _key(rows)
    dup = rows.duplicated(key, keep=False)
    if dup.any():
        first = rows[dup].iloc[0][["ablation", "attack", "value", "seed"]].to_dict()
        raise DuplicateCellsError(f"{int(dup.sum())} rows are the same setting and seed (e.g. {first}); "
                                  "each run must appear once before averaging over seeds")


def ablation_rows(table: pd.DataFrame, centre: dict | None = None) -> pd.DataFrame:
    """One row per (ablation, victim, setting, seed): the GN-FT / GN-FT+pruning rows of a
    study's table, each labelled with the ablation it belongs to (``ablation``), the value of the
    varied factor as text (``value``), whether it is the centre (``centre``), the knobs
    ``defense``, ``mode``, ``alpha``, ``r``, ``lam`` (= α·r), ``norm`` and every other
    ``defense.<knob>`` column. A row belongs to ablation *f* when every other factor is at the
    centre, so the centre appears once per ablation (one run, shown in each). Ablations whose
    factor takes a single value are left out. Order: :data:`FACTORS`, victim, then α and r
    ascending, categorical values centre first."""
    centre = {**CENTRE, **(centre or {})}
    d = table[table["defense"].isin(ABLATED)]
    if "status" in d:  # a defense that refused the model (bdlib.study: "not applicable") has no metrics to show
        d = d[d["status"].eq("ok")]
    d = d.rename(
        columns={"defense.mode": "mode", "defense.alpha": "alpha", "defense.r": "r", "defense.norm": "norm"})
    if d.empty:
        raise ValueError("the table has no GN-FT rows (defense gnft or gnft_prune)")
    d = d.assign(lam=(d["alpha"] * d["r"]).round(12))
    parts = []
    for f in FACTORS:
        at_centre = np.ones(len(d), dtype=bool)
        for g in FACTORS:
            if g != f:
                at_centre &= (d[g] == centre[g]).to_numpy()
        sub = d[at_centre]
        if sub[f].nunique() < 2:
            continue
        is_centre = sub[f] == centre[f]
        sub = sub.assign(ablation=f, value=sub[f].map(_fmt), centre=is_centre)
        parts.append(pd.concat([sub[is_centre], sub[~is_centre]]))
    if not parts:
        raise ValueError("no ablation: every factor takes one value in this table")
    rows = pd.concat(parts, ignore_index=True)
    extra = [c for c in PRUNE_COLUMNS if c in rows]
    first = ["ablation", "value", "centre", *[c for c in VICTIM if c in rows], *SHOWN, "seed",
             *[c for c in METRICS if c in rows], *extra]
    rest = [c for c in rows.columns if c.startswith("attack.") or c == "poison_rate"]
    rows = rows[first + [c for c in _knob_columns(rows) if c not in first] + rest]
    check_one_run_per_seed(rows)
    return _in_order(rows)


def _in_order(frame: pd.DataFrame) -> pd.DataFrame:
    """Ablations in :data:`FACTORS` order, then by victim; within one, numeric values (α, r)
    ascending, categorical ones with the centre first."""
    a = frame["ablation"].map({f: i for i, f in enumerate(FACTORS)})
    numeric = pd.to_numeric(frame["value"], errors="coerce")
    centre_first = (~frame["centre"]).astype(float) if "centre" in frame else 0.0
    v = numeric.where(numeric.notna(), centre_first)
    victim = [c for c in ("model", "attack") if c in frame]
    return (frame.assign(_a=a, _v=v).sort_values(["_a", *victim, "_v", "value"], kind="stable")
            .drop(columns=["_a", "_v"]).reset_index(drop=True))


def _group_columns(rows: pd.DataFrame) -> list[str]:
    """The labels a summary keeps: the ablation, the value, the victim, the shown knobs, and any
    other knob that varies within one defense (so it is never averaged over)."""
    varying = [c for c in _knob_columns(rows)
               if rows.groupby("defense")[c].nunique(dropna=False).max() > 1]
    return ["ablation", "value", "centre", *_victim(rows), *SHOWN, *varying]


def summarise(rows: pd.DataFrame, metrics: Sequence[str] = ("asr_after", "acc_after", "time_s")) -> pd.DataFrame:
    """Mean, sd and n over seeds per (ablation, victim, setting) — the only thing averaged is the
    seed. ``asr_before``/``acc_before`` (the victims') are averaged alongside. Refuses rows that
    repeat a setting and seed."""
    check_one_run_per_seed(rows)
    by = _group_columns(rows)
    values = [m for m in ("asr_before", "acc_before", *metrics) if m in rows]
    out = mean_sd(rows, by, list(dict.fromkeys(values)))
    out = out.drop(columns=[c for c in out.columns if c.endswith("_n") and c != f"{values[-1]}_n"]).rename(
        columns={f"{values[-1]}_n": "n"})
    return _in_order(out)


def vs_centre(rows: pd.DataFrame, metrics: Sequence[str] = ("asr_after", "acc_after")) -> pd.DataFrame:
    """Each setting minus the centre, paired by victim and seed (the same backdoored model, the
    same clean subset and batch order), then mean, sd and n of the difference over seeds, per
    (ablation, victim, setting). Columns ``d_<metric>_mean/_sd``."""
    check_one_run_per_seed(rows)
    victim = _victim(rows)
    ref = rows[rows["centre"]][["ablation", *victim, "seed", *metrics]]
    if ref.duplicated(["ablation", *victim, "seed"]).any():
        raise DuplicateCellsError("several centre rows for one ablation, victim and seed")
    other = rows[~rows["centre"]]
    paired = other.merge(ref, on=["ablation", *victim, "seed"], suffixes=("", "_centre"), how="inner",
                         validate="m:1")
    for m in metrics:
        paired[f"d_{m}"] = paired[m] - paired[f"{m}_centre"]
    by = [c for c in _group_columns(rows) if c != "centre"]
    out = mean_sd(paired, by, [f"d_{m}" for m in metrics])
    last = f"d_{metrics[-1]}_n"
    out = out.drop(columns=[c for c in out.columns if c.endswith("_n") and c != last]).rename(columns={last: "n"})
    return _in_order(out.assign(centre=False)).drop(columns="centre")


def exact_vs_approx(rows: pd.DataFrame) -> pd.DataFrame:
    """Quality and cost of the two gradient forms side by side, one row per victim: ASR and ACC
    after (mean, sd over seeds) and the defense's wall time of each, plus the time ratio
    exact / approx computed per seed (same victim, same steps) and then averaged."""
    m = rows[rows["ablation"] == "mode"]
    if m.empty:
        raise ValueError("no exact-vs-approx rows (the grid's mode takes one value)")
    victim = _victim(m)
    s = summarise(m, ("asr_after", "acc_after", "time_s"))
    keep = [c for c in s.columns if c.endswith(("_mean", "_sd")) and not c.startswith(("asr_before", "acc_before"))]
    wide = s.pivot(index=victim, columns="mode", values=keep)
    wide.columns = [f"{metric} {mode}" for metric, mode in wide.columns]
    times = pivot(m, [*victim, "seed"], "mode", "time_s")  # refuses a repeated (victim, seed, mode)
    modes = list(times.columns)
    if {"approx", "exact"} <= set(modes):
        ratio = (times["exact"] / times["approx"]).rename("ratio").reset_index()
        r = ratio.groupby(victim)["ratio"].agg(["mean", "std", "count"])
        wide["time exact/approx mean"], wide["time exact/approx sd"], wide["n"] = r["mean"], r["std"], r["count"]
    order = [f"{metric} {mode}" for metric in ("asr_after_mean", "asr_after_sd", "acc_after_mean", "acc_after_sd",
                                              "time_s_mean", "time_s_sd") for mode in modes]
    return wide[[c for c in order if c in wide] + [c for c in wide if c not in order]].reset_index()


def pruning_effect(rows: pd.DataFrame) -> pd.DataFrame:
    """GN-FT+pruning against GN-FT at identical GN-FT knobs, one row per victim: the paired
    differences (pruned − not pruned) of ASR and ACC over seeds, and the ratio kept and units
    pruned by the stage (mean over seeds, with their range)."""
    p = rows[rows["ablation"] == "defense"]
    if p.empty:
        raise ValueError("no pruning rows (the grid's defense takes one value)")
    d = vs_centre(p)
    victim = _victim(p)
    pr = p[p["defense"] == "gnft_prune"]
    if "prune.n_pruned" in pr:
        stage = pr.groupby(victim).agg(ratio_mean=("prune.selected_ratio", "mean"),
                                       ratio_min=("prune.selected_ratio", "min"),
                                       ratio_max=("prune.selected_ratio", "max"),
                                       n_pruned_mean=("prune.n_pruned", "mean"),
                                       n_pruned_min=("prune.n_pruned", "min"),
                                       n_pruned_max=("prune.n_pruned", "max"),
                                       n_units=("prune.n_units", "max")).reset_index()
        d = d.merge(stage, on=victim, how="left")
    return d[[*victim, "value", *[c for c in d.columns if c.startswith(("d_", "ratio_", "n_pruned", "n_units"))], "n"]]


def coverage(rows: pd.DataFrame, seeds: Sequence[int]) -> pd.DataFrame:
    """Per (ablation, victim, setting): the seeds present, and whether they are exactly ``seeds``."""
    by = ["ablation", "value", *[c for c in _victim(rows) if c != "dataset"]]
    got = rows.groupby(by, sort=False)["seed"].apply(lambda s: tuple(sorted(s)))
    return got.rename("seeds").reset_index().assign(complete=lambda f: f["seeds"] == tuple(sorted(seeds)))


def mean_sd_text(summary: pd.DataFrame, metrics: Sequence[str], digits: int = 3) -> pd.DataFrame:
    """``<metric>`` columns as ``mean ± sd`` text (for display; the numbers stay in ``summary``)."""
    out = summary.copy()
    for m in metrics:
        sd = out[f"{m}_sd"].fillna(0.0)
        out[m] = [f"{a:.{digits}f} ± {b:.{digits}f}" for a, b in zip(out[f"{m}_mean"], sd)]
        out = out.drop(columns=[f"{m}_mean", f"{m}_sd"])
    return out


__all__ = ["ABLATED", "CENTRE", "FACTORS", "GRIDS", "PRUNE_COLUMNS", "Setting", "TITLES", "ablation_rows",
           "ablation_study", "check_one_run_per_seed", "coverage", "exact_vs_approx", "grid_for", "mean_sd_text",
           "notebook_study", "ofat_settings", "pruning_effect", "resolve_grid", "run_ablation", "settings_frame",
           "study_defenses",
           "summarise", "vs_centre"]
