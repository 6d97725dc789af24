"""GN-FT's ablations (bdlib/ablation.py, notebook 42): the grid expands to the right cells, one
factor at a time with the centre once, and the summaries average over seeds only."""
from dataclasses import asdict
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from bdlib import ablation
from bdlib.ablation import CENTRE, GRIDS, ablation_rows, ofat_settings, summarise, vs_centre
from bdlib.defenses import make_defense
from bdlib.pipeline import defense_label
from bdlib.study import DuplicateCellsError, _scalar

FACTOR_KEYS = ("alpha", "r", "mode", "norm")


def _values(grid: dict) -> dict:
    return {f: grid[f] for f in ablation.FACTORS}


def _quality(factors: dict, seed: int) -> tuple[float, float, float]:
    """A distinct ASR / ACC / time per setting and seed, so any averaging across settings shows."""
    asr = 0.2 + 0.5 * factors["alpha"] + 2.0 * factors["r"] + 0.05 * (factors["mode"] == "exact") \
        + 0.03 * (factors["norm"] == "global") - 0.1 * (factors["defense"] == "gnft_prune") + 0.01 * seed
    acc = 0.9 - 0.02 * seed - 0.04 * (factors["defense"] == "gnft_prune")
    time_s = (4.0 if factors["mode"] == "exact" else 1.0) * (1 + 0.1 * seed)
    return asr, acc, time_s


def _table(settings, seeds, attacks=("badnets", "blended")) -> pd.DataFrame:
    """What Study.table gives for these settings (no training): victim rows, then one row per
    defense cell, every resolved knob a ``defense.<knob>`` column."""
    rows = []
    for attack in attacks:
        for seed in seeds:
            victim = {"dataset": "embedded-x", "profile": "smoke", "model": "smallcnn", "attack": attack, "seed": seed}
            rows.append({**victim, "defense": "none", "label": "none", "asr_before": 1.0, "acc_before": 0.9,
                         "asr_after": 1.0, "acc_after": 0.9, "time_s": 10.0})
            for s in settings:
                knobs = asdict(make_defense(s.defense, **dict(s.knobs)).config)
                asr, acc, t = _quality(s.factors, seed)
                rows.append({**victim, "defense": s.defense,
                             "label": defense_label({"defense": s.defense, "defense_knobs": knobs}),
                             **{f"defense.{k}": _scalar(v) for k, v in knobs.items()},
                             "asr_before": 1.0, "acc_before": 0.9 - 0.02 * seed, "asr_after": asr, "acc_after": acc,
                             "ra_after": 0.0, "der": 0.5, "time_s": t})
    return pd.DataFrame(rows)


def test_grids_are_the_issues_and_a_profile_picks_one():
    d = GRIDS["default"]
    assert d["attacks"] == ("badnets", "blended", "jingleback") and d["seeds"] == (0, 1, 2)
    assert d["alpha"] == (0.3, 0.7, 0.9) and d["r"] == (0.01, 0.05, 0.1)
    assert set(d["mode"]) == {"approx", "exact"} and set(d["norm"]) == {"per_tensor", "global"}
    assert set(d["defense"]) == {"gnft", "gnft_prune"}
    s = GRIDS["smoke"]
    assert len(s["attacks"]) <= 2 and len(s["seeds"]) == 2 and all(len(s[f]) == 2 for f in ablation.FACTORS)
    assert ablation.grid_for("smoke") == s and ablation.grid_for("default") == d and ablation.grid_for("paper") == d
    # the centre is the authors' ft_reg.py point and GN-FT's own defaults
    g = make_defense("gnft").config
    assert (CENTRE["r"], CENTRE["alpha"], CENTRE["norm"], CENTRE["mode"], CENTRE["lr"]) == (g.r, g.alpha, g.norm,
                                                                                           g.mode, g.lr) \
        == (0.05, 0.7, "per_tensor", "approx", 1e-3)


def test_one_factor_at_a_time_includes_the_centre_once_and_changes_one_knob_per_setting():
    settings = ofat_settings(_values(GRIDS["default"]))
    # centre + (3-1) alphas + (3-1) rs + exact + global + pruning
    assert len(settings) == 1 + 2 + 2 + 1 + 1 + 1
    centre = settings[0]
    assert centre.factors == CENTRE and set(centre.ablations) == set(ablation.FACTORS)
    assert sum(s.factors == CENTRE for s in settings) == 1
    for s in settings[1:]:
        changed = [f for f in ablation.FACTORS if s.factors[f] != CENTRE[f]]
        assert changed == list(s.ablations) and len(changed) == 1, s
    assert {s.factors["alpha"] for s in settings if s.ablations == ("alpha",)} == {0.3, 0.9}
    # the pruning setting is GN-FT's centre knobs exactly, under gnft_prune
    prune = [s for s in settings if s.defense == "gnft_prune"]
    assert len(prune) == 1 and dict(prune[0].knobs) == dict(centre.knobs)
    # a centre value left out of a list is still run, once
    assert len(ofat_settings({"alpha": (0.3,)})) == 2


def test_the_study_expands_to_every_setting_attack_and_seed_without_a_clean_model():
    g = GRIDS["smoke"]
    study = ablation.ablation_study("smoke", ["badnets", "badnets_burst"], (0, 1), _values(g))
    assert len(study.victim_cells()) == 2 * 2 and all(v.attack for v in study.victim_cells())
    cells = study.defense_cells()
    assert len(cells) == 6 * 2 * 2
    per_victim = {}
    for c in cells:
        per_victim.setdefault((c.victim.attack, c.victim.seed), []).append((c.defense, c.knobs))
    assert len(per_victim) == 4 and all(len(set(v)) == len(v) == 6 for v in per_victim.values())
    assert sorted({c.defense for c in cells}) == ["gnft", "gnft_prune"]


def test_a_duplicate_or_invalid_value_raises_before_anything_runs():
    with pytest.raises(ValueError, match="listed twice"):
        ofat_settings({"alpha": (0.3, 0.3)})
    with pytest.raises(ValueError, match="unknown GN-FT ablation factor"):
        ofat_settings({"lambda": (0.1,)})
    with pytest.raises(ValueError, match="alpha"):
        ofat_settings({"alpha": (1.5,)})
    with pytest.raises(ValueError, match="mode"):
        ofat_settings({"mode": ("approx", "second_order")})
    s = ofat_settings({"alpha": (0.3,)})
    with pytest.raises(ValueError, match="twice"):
        ablation.study_defenses(s + s[:1])


def test_rows_label_every_setting_and_summaries_average_over_seeds_only():
    settings = ofat_settings(_values(GRIDS["default"]))
    seeds = (0, 1, 2)
    rows = ablation_rows(_table(settings, seeds))
    assert set(rows.ablation) == set(ablation.FACTORS)
    assert {"alpha", "r", "lam", "mode", "norm", "defense", "seed", "value", "centre", "defense.lr"} <= set(rows)
    assert np.allclose(rows["lam"], rows["alpha"] * rows["r"])
    # the centre run appears once in each ablation (one run, shown in each)
    centre = rows[rows.centre]
    assert len(centre) == len(ablation.FACTORS) * 2 * len(seeds)
    assert (centre.groupby("ablation").size() == 2 * len(seeds)).all()
    s = summarise(rows)
    per_ablation = s.groupby(["ablation", "attack"]).size().to_dict()
    assert per_ablation[("alpha", "badnets")] == 3 and per_ablation[("r", "blended")] == 3
    assert per_ablation[("mode", "badnets")] == per_ablation[("defense", "badnets")] == 2
    assert (s["n"] == len(seeds)).all()
    # every summary row is the mean over seeds of its own setting, nothing else
    for _, row in s.iterrows():
        f = {"defense": row.defense, "alpha": row.alpha, "r": row.r, "mode": row["mode"], "norm": row.norm}
        expected = np.mean([_quality(f, sd)[0] for sd in seeds])
        assert row.asr_after_mean == pytest.approx(expected), row
    # α = 0.3 and α = 0.9 are two rows, never one averaged value
    a = s[(s.ablation == "alpha") & (s.attack == "badnets")].set_index("alpha")
    assert a.loc[0.9, "asr_after_mean"] - a.loc[0.3, "asr_after_mean"] == pytest.approx(0.3)


def test_a_repeated_setting_and_seed_raises_instead_of_averaging():
    settings = ofat_settings({"alpha": (0.3, 0.7)})
    table = _table(settings, (0, 1))
    twice = pd.concat([table, table[table.defense == "gnft"].iloc[:1]], ignore_index=True)
    with pytest.raises(DuplicateCellsError, match="same setting and seed"):
        ablation_rows(twice)
    rows = ablation_rows(table)
    with pytest.raises(DuplicateCellsError):
        summarise(pd.concat([rows, rows.iloc[:1]], ignore_index=True))


def test_vs_centre_pairs_each_setting_with_the_centre_of_its_seed():
    settings = ofat_settings({"r": (0.01, 0.05), "defense": ("gnft", "gnft_prune")})
    rows = ablation_rows(_table(settings, (0, 1, 2)))
    d = vs_centre(rows).set_index(["ablation", "attack", "value"])
    assert d.loc[("r", "badnets", "0.01"), "d_asr_after_mean"] == pytest.approx(2.0 * (0.01 - 0.05))
    assert d.loc[("defense", "blended", "gnft_prune"), "d_acc_after_mean"] == pytest.approx(-0.04)
    assert d.loc[("defense", "blended", "gnft_prune"), "d_acc_after_sd"] == pytest.approx(0.0, abs=1e-12)
    assert (d["n"] == 3).all() and not d.reset_index().value.isin(["0.05", "gnft"]).any()


def test_exact_vs_approx_puts_quality_and_cost_side_by_side():
    settings = ofat_settings({"mode": ("approx", "exact")})
    rows = ablation_rows(_table(settings, (0, 1)))
    e = ablation.exact_vs_approx(rows).set_index("attack")
    assert len(e) == 2
    assert {"asr_after_mean approx", "asr_after_mean exact", "time_s_mean approx", "time_s_mean exact",
            "time exact/approx mean"} <= set(e.columns)
    assert e.loc["badnets", "time exact/approx mean"] == pytest.approx(4.0)
    assert e.loc["badnets", "time_s_mean exact"] == pytest.approx(4.0 * 1.05)
    assert e.loc["badnets", "asr_after_mean exact"] - e.loc["badnets", "asr_after_mean approx"] == pytest.approx(0.05)


def test_run_ablation_adds_the_pruning_report_to_its_rows():
    settings = ofat_settings({"defense": ("gnft", "gnft_prune")})
    table = _table(settings, (0,), attacks=("badnets",))
    cells, recs = [], []
    for s in settings:
        knobs = asdict(make_defense(s.defense, **dict(s.knobs)).config)
        cells.append(SimpleNamespace(victim=SimpleNamespace(model="smallcnn", attack="badnets", seed=0)))
        report = {"selected_ratio": 0.1, "n_pruned": 16, "n_units": 160} if s.defense == "gnft_prune" else {}
        recs.append({"config": {"defense": s.defense, "defense_knobs": knobs}, "metrics": {"report": report}})
    study = SimpleNamespace(run=lambda serial, progress: table, defense_cells=lambda: cells,
                            last_run={"defenses": recs})
    out = ablation.run_ablation(study)
    assert len(out) == len(table)
    pr = out[out.defense == "gnft_prune"]
    assert pr["prune.n_pruned"].tolist() == [16] and out[out.defense != "gnft_prune"]["prune.n_pruned"].isna().all()
    effect = ablation.pruning_effect(ablation_rows(out))
    assert effect.loc[0, "n_pruned_mean"] == 16 and effect.loc[0, "d_asr_after_mean"] == pytest.approx(-0.1)


def test_coverage_says_which_settings_lack_a_seed():
    settings = ofat_settings({"alpha": (0.3, 0.7)})
    table = _table(settings, (0, 1))
    gone = table[~((table.seed == 1) & (table["defense.alpha"] == 0.3) & (table.attack == "badnets"))]
    cov = ablation.coverage(ablation_rows(gone), (0, 1))
    missing = cov[~cov.complete]
    assert len(missing) == 1 and missing.iloc[0][["attack", "value"]].tolist() == ["badnets", "0.3"]


def test_the_figures_draw_from_the_rows_and_refuse_a_repeated_seed(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bdlib import figures

    rows = ablation_rows(_table(ofat_settings(_values(GRIDS["default"])), (0, 1)))
    for name, part in (("42_gnft_alpha_r", rows[rows.ablation.isin(["alpha", "r"])]),
                       ("42_gnft_variants", rows[rows.ablation.isin(["mode", "norm", "defense"])])):
        part.to_csv(tmp_path / f"{name}.csv", index=False)
        fig = figures.draw(name, figures.read_table(tmp_path / f"{name}.csv"))
        assert len(fig.axes) == {"42_gnft_alpha_r": 2 * 2, "42_gnft_variants": 3 * 3}[name]
        with pytest.raises(figures.FigureDataError, match="share a cell"):
            figures.draw(name, pd.concat([part, part.iloc[:1]]))
        plt.close("all")


def test_a_notebooks_parameters_replace_the_grids_and_the_seed_shifts_it():
    g = ablation.resolve_grid("smoke", seed=3)
    assert g["seeds"] == (3, 4) and g["attacks"] == GRIDS["smoke"]["attacks"]
    g = ablation.resolve_grid("default", alpha=[0.5], seeds=[7], pruning=False)
    assert g["alpha"] == (0.5,) and g["seeds"] == (7,) and g["defense"] == ("gnft",) and g["r"] == GRIDS["default"]["r"]
    frame = ablation.settings_frame(ofat_settings(_values(g)))
    assert len(frame) == 1 + 1 + 2 + 1 + 1 and "gnft_prune" not in set(frame.defense)
    assert frame.loc[0, "lam"] == pytest.approx(0.035) and "alpha" in frame.loc[0, "ablations"]


def test_a_refused_cell_is_left_out_and_a_second_poisoning_rate_is_not_averaged_in():
    settings = ofat_settings({"defense": ("gnft", "gnft_prune")})
    table = _table(settings, (0, 1), attacks=("badnets",)).assign(status="ok", poison_rate=0.1)
    refused = (table.defense == "gnft_prune") & (table.seed == 1)
    table.loc[refused, ["asr_after", "acc_after", "time_s"]] = np.nan
    table.loc[refused, "status"] = "not applicable"
    rows = ablation_rows(table)
    assert not rows[["asr_after", "acc_after"]].isna().any().any()
    cov = ablation.coverage(rows, (0, 1)).set_index("value")
    assert cov.loc["gnft", "complete"] and cov.loc["gnft_prune", "seeds"] == (0,)
    other_rate = table[table.defense != "none"].assign(poison_rate=0.05)
    both = ablation_rows(pd.concat([table, other_rate], ignore_index=True))  # distinct runs: no error
    assert len(both) == 2 * len(rows)
    assert len(summarise(both)) == 2 * len(summarise(rows)) and (summarise(both).n <= 2).all()
    assert len(vs_centre(both)) == 2 * len(vs_centre(rows))
    with pytest.raises(DuplicateCellsError):
        summarise(both.drop(columns="poison_rate"))
