"""The paper-shaped results table (bdlib/tables.py) on hand-made study tables: aggregation
over seeds only, refusal of knob sweeps, the best-per-column rule, the three writers and the
coarse pass/fail bar. No training."""
import math

import pandas as pd
import pytest

from bdlib.study import DuplicateCellsError
from bdlib.tables import NO_DEFENSE, main_table, passes_bar, write_main_table

VICTIMS = {"badnets": (0.90, 1.00), "blended": (0.80, 0.95)}  # attack -> (ACC, ASR) before, every seed


def study_table(after: dict, seeds=(0, 1, 2), none_rows: bool = True) -> pd.DataFrame:
    """A table shaped like Study.table: ``after[(label, attack)] = [(acc, asr) per seed]``."""
    rows = []
    for i, seed in enumerate(seeds):
        for attack, (acc0, asr0) in VICTIMS.items():
            victim = dict(dataset="embedded", profile="smoke", model="smallcnn", attack=attack, seed=seed,
                          acc_before=acc0, asr_before=asr0, ra_before=0.0)
            if none_rows:
                rows.append({**victim, "defense": "none", "label": "none", "acc_after": acc0, "asr_after": asr0,
                             "ra_after": 0.0, "der": math.nan, "time_s": 9.0})
            for (label, a), values in after.items():
                if a == attack:
                    acc, asr = values[i]
                    rows.append({**victim, "defense": label.split("-")[0], "label": label, "clean_fraction": 0.05,
                                 "defense.lr": 0.01, "acc_after": acc, "asr_after": asr, "ra_after": 0.5,
                                 "der": 0.5, "time_s": 1.0 + seed})
    return pd.DataFrame(rows)


GRID = {("ft", "badnets"): [(0.88, 0.50), (0.86, 0.40), (0.87, 0.60)],
        ("gnft-approx", "badnets"): [(0.89, 0.02), (0.89, 0.04), (0.89, 0.00)],
        ("ft", "blended"): [(0.79, 0.10), (0.79, 0.10), (0.79, 0.10)],
        ("gnft-approx", "blended"): [(0.78, 0.10), (0.78, 0.10), (0.78, 0.10)]}


def cell(table, label, attack, metric):
    c = table.cells
    hit = c[(c.label == label) & (c.attack == attack) & (c.metric == metric)]
    assert len(hit) == 1
    return hit.iloc[0]


def test_cells_are_mean_sd_and_n_over_seeds_with_the_victim_as_no_defense_row():
    t = main_table(study_table(GRID))
    ft = cell(t, "ft", "badnets", "asr_after")
    assert ft["mean"] == pytest.approx(0.5) and ft["sd"] == pytest.approx(0.1) and ft["n"] == 3
    assert cell(t, "ft", "badnets", "acc_after")["mean"] == pytest.approx(0.87)
    ref = cell(t, NO_DEFENSE, "blended", "asr_after")
    assert (ref["mean"], ref["sd"], ref["n"]) == (pytest.approx(0.95), 0.0, 3)
    frame = t.frame()
    assert list(frame.index) == [NO_DEFENSE, "ft", "gnft-approx"]  # reference first, then first-seen order
    assert list(frame.columns) == [("badnets", "ACC"), ("badnets", "ASR"), ("blended", "ACC"), ("blended", "ASR")]
    assert frame.loc["ft", ("badnets", "ASR")] == "50.00 ± 10.00"


def test_no_defense_row_comes_from_before_numbers_when_the_table_has_no_none_rows():
    t = main_table(study_table(GRID, none_rows=False))
    assert cell(t, NO_DEFENSE, "badnets", "acc_after")["mean"] == pytest.approx(0.90)
    assert cell(t, NO_DEFENSE, "badnets", "acc_after")["n"] == 3


def test_a_cell_with_a_missing_seed_says_its_n():
    table = study_table(GRID)
    table = table.drop(table[(table.label == "ft") & (table.attack == "badnets") & (table.seed == 2)].index)
    t = main_table(table)
    assert cell(t, "ft", "badnets", "asr_after")["n"] == 2 and t.n == 3
    assert t.frame().loc["ft", ("badnets", "ASR")] == "45.00 ± 7.07 (n=2)"


def test_a_knob_sweep_in_one_cell_raises_naming_the_knob():
    table = study_table(GRID)
    table.loc[(table.label == "ft") & (table.seed == 1), "defense.lr"] = 0.001  # same label, another lr
    with pytest.raises(DuplicateCellsError, match=r"differ in \['defense.lr'\]"):
        main_table(table)
    with pytest.raises(DuplicateCellsError, match=r"defense.lr"):
        passes_bar(table)


def test_the_same_seed_twice_and_several_models_are_refused():
    table = study_table(GRID)
    with pytest.raises(DuplicateCellsError, match="same run twice"):
        main_table(pd.concat([table, table[table.label == "ft"]]))
    with pytest.raises(ValueError, match=r"several models \['cnn2', 'smallcnn'\]"):
        main_table(pd.concat([table, table.assign(model="cnn2")]))
    both = main_table(pd.concat([table, table.assign(model="cnn2")]), row=["model", "label"])
    assert len(both.frame()) == 6
    # each model's block together, its undefended victim first (issue 13: notebook 50 with several models)
    assert list(both.frame().index) == [f"{m} / {lab}" for m in ("cnn2", "smallcnn")  # the cells' order
                                        for lab in (NO_DEFENSE, "ft", "gnft-approx")]


def test_best_is_highest_acc_and_lowest_asr_among_defenses_ties_all_marked():
    t = main_table(study_table(GRID))
    best = t.cells[t.cells.best]
    got = sorted(zip(best.label, best.attack, best.metric))
    # badnets: GN-FT has the highest ACC and lowest ASR; blended: FT's ACC, and an ASR tie (both 10 %).
    # The undefended victim has the highest ACC everywhere but is the reference, not a candidate.
    assert got == [("ft", "blended", "acc_after"), ("ft", "blended", "asr_after"),
                   ("gnft-approx", "badnets", "acc_after"), ("gnft-approx", "badnets", "asr_after"),
                   ("gnft-approx", "blended", "asr_after")]
    assert not t.cells[t.cells.label == NO_DEFENSE].best.any()


def test_best_compares_at_the_precision_shown():
    grid = {**GRID, ("gnft-approx", "blended"): [(0.78, 0.100001)] * 3}  # 10.0001 %: reads 10.00 %
    t = main_table(study_table(grid))
    assert cell(t, "gnft-approx", "blended", "asr_after")["best"]
    assert not cell(main_table(study_table(grid), decimals=4), "gnft-approx", "blended", "asr_after")["best"]


def test_transposed_orientation_marks_the_best_defense_per_attack():
    t = main_table(study_table(GRID), row="attack", col="label")
    assert list(t.frame().index) == ["badnets", "blended"]
    assert t.frame().loc["badnets", ("gnft-approx", "ASR")].endswith(" *")
    assert not t.frame().loc["badnets", ("ft", "ASR")].endswith(" *")


def test_markdown_and_latex_bold_exactly_the_best_cells(tmp_path):
    t = main_table(study_table(GRID))
    paths = write_main_table(t, tmp_path / "sub" / "table_main")
    assert [p.name for p in paths] == ["table_main.csv", "table_main.md", "table_main.tex"]
    md, tex = paths[1].read_text(), paths[2].read_text()
    n_best = int(t.cells.best.sum())
    assert md.count("**") == 2 * n_best and tex.count(r"\textbf{") == n_best
    lines = {line.split(" | ")[0].strip("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert "**2.00 ± 2.00**" in lines["gnft-approx"]  # badnets ASR
    assert "**" not in lines[NO_DEFENSE]
    assert "**" not in lines["ft"].split(" | ")[1] and "**" not in lines["ft"].split(" | ")[2]  # badnets ACC, ASR
    assert r"\textbf{2.00 $\pm$ 2.00}" in tex and r"\toprule" in tex and r"\bottomrule" in tex
    assert r"\multicolumn{2}{c}{badnets}" in tex and r"\cmidrule(lr){2-3}" in tex
    row = next(line for line in tex.splitlines() if line.startswith(NO_DEFENSE))
    assert r"\textbf" not in row


def test_csv_round_trips_the_numbers(tmp_path):
    t = main_table(study_table(GRID), metrics=("acc_after", "asr_after", "der"))
    back = pd.read_csv(write_main_table(t, tmp_path / "t")[0])
    pd.testing.assert_frame_equal(back, t.cells.reset_index(drop=True), check_dtype=False)
    der_ref = back[(back.label == NO_DEFENSE) & (back.metric == "der")]
    assert der_ref["mean"].isna().all() and (der_ref["n"] == 0).all()  # no DER for the undefended victim
    assert t.frame().loc[NO_DEFENSE, ("badnets", "DER")] == "–"


def test_unknown_metric_is_refused_naming_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown metric.*'acc'.*valid: \['acc_after'"):
        main_table(study_table(GRID), metrics=("acc",))


def test_passes_bar_on_means_over_seeds():
    grid = {("ft", "badnets"): [(0.88, 0.50), (0.86, 0.40), (0.87, 0.60)],  # ASR 50 %: fails
            ("gnft-approx", "badnets"): [(0.87, 0.10), (0.87, 0.30), (0.87, 0.20)],  # ASR exactly 20 %, ACC -3: passes
            ("ft", "blended"): [(0.76, 0.00), (0.77, 0.00), (0.78, 0.00)],  # ACC drop 3 points exactly: passes
            ("gnft-approx", "blended"): [(0.76, 0.00), (0.76, 0.00), (0.77, 0.00)]}  # ACC drop 3.67: fails
    bar = passes_bar(study_table(grid)).set_index(["attack", "label"])
    assert bar.passes.to_dict() == {("badnets", "ft"): False, ("badnets", "gnft-approx"): True,
                                    ("blended", "ft"): True, ("blended", "gnft-approx"): False}
    assert not bar.loc[("badnets", "ft"), "removes_backdoor"] and bar.loc[("badnets", "ft"), "keeps_acc"]
    assert not bar.loc[("blended", "gnft-approx"), "keeps_acc"]
    assert (bar.n == 3).all() and NO_DEFENSE not in bar.index.get_level_values("label")
    assert not passes_bar(study_table(grid), asr_bar=0.19).loc[lambda b: b.label == "gnft-approx"].passes.any()


def test_passes_bar_judges_each_model_on_its_own():
    """Issue 13: a study of several models gets one verdict per (attack, label, model), each against
    its own victim; one model keeps the columns and rows it always had."""
    one = study_table(GRID)
    other = one.assign(model="resnet", asr_after=one.asr_after.where(one.label == "none", 1.0))  # nothing passes
    bar = passes_bar(pd.concat([one, other], ignore_index=True)).set_index(["attack", "label", "model"])
    assert len(bar) == 8 and (bar.n == 3).all()
    alone = passes_bar(one).set_index(["attack", "label"]).passes
    assert bar.passes.xs("smallcnn", level="model").to_dict() == alone.to_dict()
    assert not bar.passes.xs("resnet", level="model").any()
    assert list(passes_bar(one).columns[:4]) == ["attack", "label", "model", "dataset"]


def test_the_victims_own_row_wins_and_disagreeing_before_numbers_without_one_raise():
    table = study_table(GRID)
    table.loc[table.label == "ft", "acc_before"] = 0.5  # a defense run that saw another victim ACC
    assert cell(main_table(table), NO_DEFENSE, "badnets", "acc_after")["mean"] == pytest.approx(0.90)
    with pytest.raises(ValueError, match="different before-defense numbers"):
        main_table(table[table.label != "none"])


def test_victim_report_judges_each_victim_against_its_own_clean_model_and_names_refusals():
    from bdlib.tables import victim_report

    rows = pd.DataFrame([
        {"model": "resnet", "attack": "badnets", "defense": "ft", "status": "ok", "reason": None, "asr_before": 0.99,
         "acc_before": 0.95, "asr_after": 0.5, "acc_after": 0.9, "der": 0.72, "time_s": 3.0},
        {"model": "resnet", "attack": "badnets", "defense": "anp", "status": "not applicable",
         "reason": "resnet has no norm_layers", "asr_before": 0.99, "acc_before": 0.95, "asr_after": float("nan"),
         "acc_after": float("nan"), "der": float("nan"), "time_s": float("nan")},
        {"model": "lstmatt", "attack": "badnets", "defense": "ft", "status": "ok", "reason": None, "asr_before": 0.8,
         "acc_before": 0.5, "asr_after": 0.7, "acc_after": 0.5, "der": 0.55, "time_s": 2.0}])
    lines = victim_report(rows, {"resnet": 0.97, "lstmatt": 0.6})
    assert lines[0] == "clean resnet ACC 97.0% (>= 90 %: True)"
    assert lines[1] == "resnet / badnets: ASR 99.0% (>= 90 %: True), ACC 95.0% (within 3 points of clean: True)"
    assert lines[2].split() == ["ft", "ASR", "99.0%", "->", "50.0%,", "ACC", "95.0%", "->", "90.0%,", "DER", "0.720,",
                                "3.0", "s"]
    assert lines[3].split(None, 1) == ["anp", "not applicable: resnet has no norm_layers"]
    # lstmatt: ASR under the bar and ACC 10 points under its own clean model
    assert lines[5] == "lstmatt / badnets: ASR 80.0% (>= 90 %: False), ACC 50.0% (within 3 points of clean: False)"
