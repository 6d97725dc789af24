"""Budget curves (bdlib/budget.py) and the fair FT baseline (bdlib/study.py: matched_ft_knobs):
FT at GN-FT's optimiser differs from GN-FT only by the penalty; a checkpoint of a long
constant-rate run is the short run; budgets are nested; the answer is read from seeds."""
import copy

import numpy as np
import pandas as pd
import pytest
import torch

from bdlib.budget import CurveSpec, budget_answer, budget_curve, budget_summary, budget_table, nested_subset, steps_per_epoch
from bdlib.defenses import CleanData, make_defense
from bdlib.models import build_model
from bdlib.pipeline import load_experiment
from bdlib.profiles import get_profile
from bdlib.study import matched_ft_knobs

from test_study_on_real_layouts import TINY, make_folder_corpus


def _clean(n=24, shape=(21, 12), classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, 1, *shape, generator=g) + y.view(-1, 1, 1, 1).float()
    return CleanData(x, y)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_matched_ft_is_gnft_without_the_penalty_step_for_step():
    """FT at GN-FT's optimiser and GN-FT with alpha = 0 (no penalty) give identical weights:
    the only difference between the FT and GN-FT rows is the regulariser."""
    clean = _clean()
    net = build_model("smallcnn", (21, 12), 3, seed=0)
    gnft = {"lr": 1e-3, "epochs": 3, "batch_size": 8}
    ft_net, gn_net, gn_pen = copy.deepcopy(net), copy.deepcopy(net), copy.deepcopy(net)
    make_defense("ft", seed=5, **matched_ft_knobs(gnft)).defend(ft_net, clean, progress=False)
    make_defense("gnft", seed=5, alpha=0.0, **gnft).defend(gn_net, clean, progress=False)
    make_defense("gnft", seed=5, **gnft).defend(gn_pen, clean, progress=False)
    a, b, c = _state(ft_net), _state(gn_net), _state(gn_pen)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())  # the penalty does act
    # BackdoorBench's FT (lr 0.01, weight decay, cosine) is a different optimiser
    bb = copy.deepcopy(net)
    make_defense("ft", seed=5, epochs=3, batch_size=8).defend(bb, clean, progress=False)
    assert any(not torch.equal(a[k], v) for k, v in _state(bb).items() if v.is_floating_point())


def test_matched_ft_knobs_follow_the_gnft_setting():
    assert matched_ft_knobs() == {"lr": 1e-3, "momentum": 0.9, "weight_decay": 0.0, "cosine": False}
    k = matched_ft_knobs({"lr": 5e-3, "mode": "exact", "epochs": 7, "weight_decay": 1e-4})
    assert k == {"lr": 5e-3, "momentum": 0.9, "weight_decay": 1e-4, "cosine": False, "epochs": 7}
    with pytest.raises(ValueError, match="lr"):
        matched_ft_knobs({"lr": -1.0})


@pytest.mark.parametrize("method", ["ft", "gnft"])
def test_a_checkpoint_of_a_long_run_is_the_short_run(method):
    """Constant learning rate: the model at epoch 2 of a 4-epoch run equals a 2-epoch run, so
    one run gives the whole steps axis; evaluating along the way changes nothing."""
    clean = _clean()
    net = build_model("smallcnn", (21, 12), 3, seed=1)
    spec_long = CurveSpec(method=method, n_clean=24, checkpoints=(6, 12), lr=1e-2)
    spec_short = CurveSpec(method=method, n_clean=24, checkpoints=(6,), lr=1e-2)
    name, long_knobs = spec_long.defense(batch_size=8)
    _, short_knobs = spec_short.defense(batch_size=8)
    assert (long_knobs["epochs"], short_knobs["epochs"]) == (4, 2)  # 3 steps an epoch
    seen = {}

    def grab(epoch, model):
        model(clean.features[:4])  # an evaluation pass in eval mode must not disturb training
        seen[epoch] = _state(model)

    long_net, short_net = copy.deepcopy(net), copy.deepcopy(net)
    make_defense(name, seed=3, **long_knobs).defend(long_net, clean, progress=False, on_epoch_end=grab)
    make_defense(name, seed=3, **short_knobs).defend(short_net, clean, progress=False)
    short = _state(short_net)
    assert all(torch.equal(seen[2][k], short[k]) for k in short)
    assert any(not torch.equal(seen[4][k], short[k]) for k in short if short[k].is_floating_point())


def test_steps_per_epoch_skips_a_final_single_clip():
    assert steps_per_epoch(80, 256) == 1
    assert steps_per_epoch(960, 256) == 4
    assert steps_per_epoch(257, 256) == 1  # the lone 257th clip is skipped (BatchNorm)
    assert steps_per_epoch(258, 256) == 2
    assert CurveSpec(n_clean=960, checkpoints=(100, 1200)).epochs(256) == [25, 300]
    assert CurveSpec(n_clean=80, checkpoints=(1, 10)).epochs(256) == [1, 10]


def test_budgets_are_nested_and_bounded_by_the_pool():
    pool = np.arange(100, 200)
    small, big = nested_subset(pool, 10, seed=4), nested_subset(pool, 60, seed=4)
    assert set(pool[small]) <= set(pool[big]) and len(big) == 60
    assert set(nested_subset(pool, 10, seed=5)) != set(small)  # another seed, another draw
    with pytest.raises(ValueError, match="exceeds the defender's pool of 100.*grow the data"):
        nested_subset(pool, 101, seed=0)


def test_curve_spec_validation_names_the_field():
    with pytest.raises(ValueError, match="method"):
        CurveSpec(method="sam")
    with pytest.raises(ValueError, match="checkpoints"):
        CurveSpec(checkpoints=(0, 5))
    with pytest.raises(ValueError, match="n_clean"):
        CurveSpec(n_clean=1)


def test_budget_curve_end_to_end_is_stored_and_reused(tmp_path):
    corpus = make_folder_corpus(tmp_path / "words")
    prof = get_profile("smoke", **{**TINY, "clean_fraction": 0.6})
    exp = load_experiment(prof, dataset="folder", dataset_root=corpus, root=tmp_path / "data", progress=False)
    pool = len(exp.clean_data()[1])
    specs = [CurveSpec(attack="badnets", method=m, n_clean=n, checkpoints=(1, 3), lr=1e-2)
             for m in ("ft", "gnft") for n in (8, pool)]
    with pytest.raises(ValueError, match="exceeds the defender's pool"):
        budget_curve(exp, CurveSpec(n_clean=pool + 1), progress=False)
    table = budget_table({0: exp}, specs, progress=False)
    # each curve: the victim (step 0) and every checkpoint it passed, at whole epochs
    assert len(table) == sum(1 + len(s.epochs(prof.defense_batch_size)) for s in specs)
    first = table[table.step == 0]
    assert (first.asr == first.asr_before).all() and len(first) == len(specs)
    assert set(table.method) == {"ft", "gnft"} and set(table.n_clean) == {8, pool}
    rec = budget_curve(exp, specs[0], progress=False)
    assert rec["metrics"]["n_clean"] == 8 and len(set(rec["metrics"]["clean_idx"])) == 8
    again = budget_table({0: exp}, specs, progress=False)  # served from the store: identical
    pd.testing.assert_frame_equal(table, again)
    assert len(exp.store.records("budget_curves")) == len(specs)


def test_budget_answer_reads_the_spread():
    rows = []
    for seed in range(3):
        for step, asr_ft, asr_gn in [(0, 1.0, 1.0), (100, 0.9, 0.5 + 0.01 * seed), (200, 0.3, 0.1 + 0.01 * seed)]:
            for method, asr in (("ft", asr_ft), ("gnft", asr_gn)):
                rows.append({"attack": "badnets", "model": "smallcnn", "method": method, "n_clean": 80, "lr": 1e-3,
                             "seed": seed, "victim_seed": 0, "step": step, "asr": asr, "acc": 0.9 - 0.01 * (method == "gnft"),
                             "acc_before": 0.91})
    table = pd.DataFrame(rows)
    ans = budget_answer(table)
    assert list(zip(ans["removes"].method, ans["removes"].step)) == [("gnft", 200)]
    assert sorted(ans["gnft_better"].step) == [100, 200]
    noisy = table.copy()
    noisy.loc[(noisy.method == "gnft") & (noisy.step == 100), "asr"] = [0.1, 1.0, 1.2]  # spread swamps the gap
    assert sorted(budget_answer(noisy)["gnft_better"].step) == [200]
    s = budget_summary(table)
    assert set(s.asr_n) == {3}
    exact = table.assign(acc_before=569 / 600, acc=lambda t: t.acc.where(t.method == "ft", 551 / 600))
    assert ("gnft", 200) in set(zip(budget_answer(exact)["removes"].method, budget_answer(exact)["removes"].step)), \
        "a mean drop of exactly 3 points (float error above 0.03) is within the bar"
