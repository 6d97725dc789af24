"""bdlib.budget_report: what notebooks 41 and 44 show of a curve table (theirs or a committed one)."""
import math

import pandas as pd
import pytest

from bdlib import budget_report


def _table(settings):
    """Rows of FT and GN-FT curves: ``settings`` maps (attack, n, lr) -> (last step, {method: [asr per seed]})."""
    rows = []
    for (attack, n, lr), (last, asr_at_end) in settings.items():
        for method, asrs in asr_at_end.items():
            for seed, asr_end in enumerate(asrs):
                for step in (0, last // 2, last):
                    asr = 1.0 if step == 0 else (asr_end if step == last else 0.95)
                    rows.append({"attack": attack, "model": "smallcnn", "method": method, "n_clean": n, "lr": lr,
                                 "seed": seed, "victim_seed": seed, "step": step, "asr": asr,
                                 "acc": 0.95 - 0.01 * (step == last), "acc_before": 0.95, "asr_before": 1.0})
    return pd.DataFrame(rows)


SETTINGS = {("badnets", 960, 1e-2): (1200, {"ft": [1.0, 1.0, 1.0], "gnft": [0.4, 0.5, 0.6]}),
            ("blended", 80, 1e-3): (300, {"ft": [1.0, 0.9, 1.0], "gnft": [0.1, 0.15, 0.05]})}


def test_at_end_reads_each_setting_at_its_own_last_step():
    end = budget_report.at_end(_table(SETTINGS))
    steps = {(a, n): s for (_, a, n, _, s, _) in end.index}
    assert steps == {("badnets", 960): 1200, ("blended", 80): 300}  # not the table's overall last step
    row = end.loc[("smallcnn", "badnets", 960, 1e-2, 1200, "gnft")]
    assert row.asr_mean == pytest.approx(0.5)
    assert [row[f"asr seed {s}"] for s in range(3)] == [0.4, 0.5, 0.6]
    assert row.acc_drop_mean == pytest.approx(0.01)
    assert len(end) == 4  # one row per (setting, method): nothing averaged across settings


def test_answer_text_names_the_settings_or_says_none():
    text = budget_report.answer_text(_table(SETTINGS))
    removes, better = text.split("settings where GN-FT beats FT")
    assert "blended" in removes and "badnets" not in removes  # 10 % ASR, 1 point of ACC: under both bars
    assert "badnets" in better and "1200" in better
    none = budget_report.answer_text(_table({("badnets", 80, 1e-3): (300, {"ft": [1.0] * 3, "gnft": [1.0] * 3})}))
    assert none.count(": none") == 2
    strict = budget_report.answer_text(_table(SETTINGS), acc_drop_bar=0.005)
    assert strict.startswith("settings where a method removes the backdoor (ASR < 20%, ACC drop <= 0%): none")


def test_committed_curves_are_read_back_and_a_missing_name_says_where(tmp_path):
    _table(SETTINGS).to_csv(tmp_path / "41_budget_curves_full.csv", index=False)
    back = budget_report.committed("41_budget_curves_full", folder=tmp_path)
    assert len(back) == len(_table(SETTINGS)) and not math.isnan(back.asr.sum())
    with pytest.raises(FileNotFoundError, match="no committed curves named '41_budget_curves_ful'"):
        budget_report.committed("41_budget_curves_ful", folder=tmp_path)


def test_the_repository_commits_the_full_slices_the_notebooks_read():
    for name in ("41_budget_curves_full", "44_budget_lr_full", "45_budget_long"):
        t = budget_report.committed(name)
        assert t.groupby(["attack", "method", "n_clean", "lr"]).seed.nunique().min() >= 3, name


def test_every_grid_the_budget_notebooks_publish_has_a_drawer():
    from bdlib import figures
    from bdlib.budget import GRIDS

    assert figures.published_name("41_budget_curves", "smoke") == "41_budget_curves"  # never a second name for CI's run
    assert figures.published_name("41_budget_curves", "full") == "41_budget_curves_full"
    for grid in [*GRIDS, "default", "full"]:  # notebook 41's grids: bdlib.budget's and its own two
        assert figures.published_name("41_budget_curves", grid) in figures.FIGURES, grid
    for grid in ("smoke", "default", "full"):  # notebook 44's
        assert figures.published_name("44_budget_lr", grid) in figures.FIGURES, grid
    for name in ("45_budget_long", "45_budget_long_smoke"):  # notebook 45's: grid "long", and "smoke" under another name
        assert name in figures.FIGURES, name
