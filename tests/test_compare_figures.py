"""benchmarks/compare_figures.py (the README's reproducibility check): rows join on their settings,
not on outcomes, a changed number is reported by its size, and the removal bar is read per run."""
import importlib.util

import pandas as pd

from bdlib.paths import REPO_ROOT


def _load():
    spec = importlib.util.spec_from_file_location("compare_figures", REPO_ROOT / "benchmarks" / "compare_figures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _grid(asr_after_flowmur: float, unit_class: str) -> pd.DataFrame:
    return pd.DataFrame({
        "attack": ["badnets", "flowmur"], "model": ["smallcnn"] * 2, "defense": ["ft"] * 2,
        "class": ["clean", unit_class],  # an outcome: must not be a join key
        "acc_before": [0.94, 0.93], "asr_before": [1.0, 0.13],
        "acc_after": [0.93, 0.92], "asr_after": [1.0, asr_after_flowmur],
    })


def test_rows_join_on_settings_and_differences_are_measured():
    mod = _load()
    # another synthesis has another data set id: the rows must still pair up
    base, other = _grid(0.15, "clean").assign(dataset="embedded-a3b2"), _grid(0.30, "backdoor").assign(dataset="embedded-1b13")
    summary, joined, only_base, only_other = mod.compare(base, other)
    assert (len(joined), only_base, only_other) == (2, 0, 0)
    diff = summary.set_index("column")
    assert abs(diff.loc["asr_after", "max_abs"] - 0.15) < 1e-12
    assert diff.loc["acc_after", "max_abs"] == 0.0


def test_removal_bar_is_read_in_each_run():
    mod = _load()
    _, joined, _, _ = mod.compare(_grid(0.15, "clean"), _grid(0.30, "clean"))
    assert list(mod.removals(joined, "base").attack) == ["flowmur"]  # ASR 15 % < 20 %, ACC down 1 point
    assert mod.removals(joined, "other").empty  # 30 %: not removed
