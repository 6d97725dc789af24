"""GN-FT + the authors' post-fine-tuning pruning stage (ft_reg.py ``is_prune``; issue 12)."""
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from bdlib.defenses import CleanData, make_defense
from bdlib.defenses.gnft import approx_gradient
from bdlib.defenses.gnft_prune import (AUTHORS_RATIOS, clean_loss_acc, combined_scores, layer_grad_change,
                                       n_to_prune, normalize_and_invert, prune_layers, pruning_order, prune_units,
                                       select_ratio, standardize, unit_loss_changes)
from bdlib.models import build_model
from bdlib.models.contract import DefenseNotApplicable
from bdlib.synthetic_task import fit, template_task


class SignNet(nn.Module):
    """1×1 conv with 4 units → ReLU → mean pool → linear. Units 0 (+x) and 1 (−x) carry the task (the
    class is the sign of the input's mean); the classifier ignores units 2 and 3 (zero weights)."""

    last_conv = "conv"
    last_conv_norm = None
    attention_layers = ()
    norm_layers = ()
    conv_norm_pairs = ()
    classifier = "fc"

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, kernel_size=1)
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0, 0.5, -0.7]).view(4, 1, 1, 1))
            self.conv.bias.zero_()
            self.fc.weight.copy_(torch.tensor([[0.0, 2.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]]))
            self.fc.bias.copy_(torch.tensor([0.1, 0.0]))  # a tie (both task units pruned) goes to class 0

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def sign_data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = (2.0 * y - 1).view(n, 1, 1, 1) + 0.3 * torch.randn(n, 1, 4, 4, generator=g)
    return CleanData(x, y)


# --- the pure functions, against the authors' formulas -----------------------------------------
def test_standardize_and_normalize_match_the_authors_sklearn_and_numpy_code():
    StandardScaler = pytest.importorskip("sklearn.preprocessing").StandardScaler
    v = np.array([0.3, -1.2, 4.0, 0.0, 2.5])
    np.testing.assert_allclose(standardize(v), StandardScaler().fit_transform(v.reshape(-1, 1)).flatten())
    np.testing.assert_array_equal(standardize(np.full(4, 2.0)), np.zeros(4))  # StandardScaler: zero std -> scale 1
    np.testing.assert_allclose(normalize_and_invert([1.0, 3.0, 2.0]), [1.0, 0.0, 0.5])
    np.testing.assert_array_equal(normalize_and_invert([5.0, 5.0]), [1.0, 1.0])  # the authors': 0/0


def test_scores_rank_a_unit_with_a_large_gradient_change_last_and_zero_units_the_loss_needs():
    grad = np.array([0.1, 0.1, 5.0, 0.1, 0.1])   # unit 2: the gradient moved most
    loss = np.array([-0.01, 0.0, -0.01, 0.2, -0.02])  # unit 3: pruning it raises the clean loss
    s = combined_scores(grad, loss, w=0.9, loss_threshold=0.0)
    # by hand, ft_reg.py lines 309-319
    z = lambda a: (a - a.mean()) / a.std()  # noqa: E731
    raw = 0.9 * z(grad) + 0.1 * z(loss)
    expect = 1 - (raw - raw.min()) / (raw.max() - raw.min())
    expect[loss > 0] = 0
    np.testing.assert_allclose(s, expect)
    assert s[2] == 0.0 and s[3] == 0.0  # the max combined score inverts to 0; unit 3 is zeroed by the rule
    order = pruning_order(s)
    assert list(order[-2:]) == [2, 3]  # tied at 0: original order kept (stable, as sorted(reverse=True))
    assert order[0] == 4  # the lowest loss change among the small gradient changes
    # w = 1: only the gradient change ranks (still minus the units the loss needs)
    assert list(pruning_order(combined_scores(grad, loss, w=1.0))[:3]) == [0, 1, 4]


def test_layer_gradient_change_is_the_whole_layer_norm_per_unit_as_the_authors_and_the_row_norm_per_unit():
    a = torch.zeros(3, 2, 1, 1)
    b = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]]).view(3, 2, 1, 1)
    np.testing.assert_allclose(layer_grad_change(a, b, "layer"), [np.sqrt(26)] * 3)
    np.testing.assert_allclose(layer_grad_change(a, b, "unit"), [5.0, 0.0, 1.0])


def test_selection_rules_on_a_constructed_sweep():
    rows = [(0.0, 0.50, 0.90), (0.01, 0.45, 0.90), (0.05, 0.40, 0.85), (0.1, 0.60, 0.80),
            (0.15, 0.40, 0.82), (0.2, 0.90, 0.60), (0.5, 2.00, 0.10)]
    sweep = [{"ratio": r, "clean_loss": lo, "clean_acc": a} for r, lo, a in rows]
    # within 10 % of 0.90 means acc > 0.81: 0.15 (0.82) is the largest, although 0.1 (0.80) fails before it
    assert select_ratio(sweep, "acc_drop", 0.10) == 0.15
    assert select_ratio(sweep, "acc_drop", 0.06) == 0.05  # drop 0.056 at 0.05 passes, 0.089 at 0.15 not
    assert select_ratio(sweep, "min_loss") == 0.15  # 0.40 at 0.05 and 0.15: the tie goes to the larger ratio
    assert select_ratio(sweep, "largest") == 0.5
    # the bound is strict (as ANP's sweep / acc_ratio); nothing within it keeps the model unpruned
    exact = [{"ratio": 0.0, "clean_loss": 1.0, "clean_acc": 1.0}, {"ratio": 0.1, "clean_loss": 1.0, "clean_acc": 0.75}]
    assert select_ratio(exact, "acc_drop", 0.25) == 0.0
    with pytest.raises(ValueError, match="unpruned model"):
        select_ratio(sweep[1:], "acc_drop")
    with pytest.raises(ValueError, match="valid: acc_drop, min_loss, largest"):
        select_ratio(sweep, "best")


def test_ratio_to_count_rounds_down_as_the_authors_and_pruning_zeroes_exactly_those_rows():
    assert [n_to_prune(r, 160) for r in AUTHORS_RATIOS] == [1, 8, 16, 24, 32, 40, 48, 64, 80, 112, 144]
    assert n_to_prune(0.05, 11) == 0
    net = build_model("smallcnn", (24, 16), 4, seed=0)
    layers = {"conv1": net.conv1, "conv3": net.conv3}
    before = copy.deepcopy(net.state_dict())
    ranked = [("conv3", 5), ("conv1", 0), ("conv3", 31), ("conv1", 7)]
    prune_units(layers, ranked[:n_to_prune(0.5, len(ranked))])
    after = net.state_dict()
    zeroed = {(n, k) for n in ("conv1", "conv3") for k in range(after[f"{n}.weight"].shape[0])
              if not torch.equal(after[f"{n}.weight"][k], before[f"{n}.weight"][k])}
    assert zeroed == {("conv3", 5), ("conv1", 0)}
    assert (after["conv3.weight"][5] == 0).all() and (after["conv1.weight"][0] == 0).all()
    for k, v in after.items():  # biases, BatchNorm and other layers untouched (ft_reg.py's pruning)
        if k not in ("conv1.weight", "conv3.weight"):
            assert torch.equal(v, before[k]), k


def test_loss_change_is_the_authors_prune_one_neuron_on_a_copy_also_across_a_residual_block():
    """ResNet: a shortcut projection and the 1×1 reducer, each unit against ft_reg.py's way (zero the
    weight row of a deep copy, eval loss); every Conv2d of the model is a pruning layer (lines 44-55)."""
    torch.manual_seed(0)
    net = build_model("resnet", (26, 13), 3).eval()
    clean = template_task(12, (26, 13), 3, seed=0)
    every = prune_layers(net)
    assert set(every) == {n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    assert "layer2.0.downsample.0" in every and "conv2d" in every
    layers = {n: every[n] for n in ("layer2.0.downsample.0", "conv2d")}
    before = copy.deepcopy(net.state_dict())
    got = unit_loss_changes(net, layers, clean)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # restored
    base = clean_loss_acc(net, clean)[0]
    want = []
    for name, m in layers.items():
        for k in range(m.out_channels):
            cp = copy.deepcopy(net)
            sd = cp.state_dict()
            sd[f"{name}.weight"][k] = 0.0  # ft_reg.py prune_one_neuron, lines 173-177
            cp.load_state_dict(sd)
            want.append(clean_loss_acc(cp, clean)[0] - base)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert np.abs(got).max() > 1e-4


# --- the defense ----------------------------------------------------------------------------
def test_dormant_units_are_pruned_first_and_the_rule_stops_before_a_needed_one():
    """Units 2 and 3 of SignNet do nothing (loss change 0), 0 and 1 carry the task (loss change > 0,
    score 0): the ranking is [2, 3, 0, 1]; at the authors' ratios 4 units give 0, 0, 0, 0, 0, 1, 1, 1,
    2, 2, 3 pruned (after ratio 0), and clean accuracy holds until the third unit, so "acc_drop" keeps
    0.7 (two units)."""
    net, clean = SignNet(), sign_data()
    before = copy.deepcopy(net.state_dict())
    d = make_defense("gnft_prune", epochs=2, batch_size=len(clean), lr=1e-9)  # GN-FT leaves it as it is
    out = d.defend(net, clean, progress=False)
    r = d.report
    assert r["layers"] == ["conv"] and r["n_units"] == 4
    assert [u for _, u, *_ in r["ranking"]] == [2, 3, 0, 1]
    assert [s for _, _, s, *_ in r["ranking"]][2:] == [0.0, 0.0]
    assert all(lc > 0 for *_, lc in r["ranking"][2:]) and all(lc == 0 for *_, lc in r["ranking"][:2])
    assert [row["n_pruned"] for row in r["sweep"]] == [0] * 6 + [1, 1, 1, 2, 2, 3]
    assert r["clean_acc_before_pruning"] == 1.0 and r["sweep"][-1]["clean_acc"] < 0.9
    assert r["selected_ratio"] == 0.7 and r["n_pruned"] == 2
    assert sorted(u for _, u in r["pruned_units"]) == [2, 3]
    w = out.conv.weight.detach()
    assert (w[2] == 0).all() and (w[3] == 0).all()
    torch.testing.assert_close(w[:2], before["conv.weight"][:2])
    torch.testing.assert_close(out.conv.bias, before["conv.bias"])
    assert set(r["per_ratio_clean_loss"]) == {"0.0", *map(str, AUTHORS_RATIOS)}
    # the other rules on the same sweep
    for rule, ratio in (("min_loss", None), ("largest", 0.9)):
        d2 = make_defense("gnft_prune", epochs=2, batch_size=len(clean), lr=1e-9, selection=rule)
        d2.defend(SignNet(), clean, progress=False)
        losses = {row["ratio"]: row["clean_loss"] for row in d2.report["sweep"]}
        want = ratio if ratio is not None else max(losses, key=lambda k: (-losses[k], k))
        assert d2.report["selected_ratio"] == want


def test_gradient_change_is_that_between_the_first_and_the_last_epochs_update_direction():
    """grad_s / grad_t (ft_reg.py 266-268, 281): GN-FT's update direction on the last batch of the first
    and of the last epoch; with one full batch per epoch they are the directions of steps 1 and 3."""
    clean = sign_data()
    knobs = dict(batch_size=len(clean), lr=0.05)
    d = make_defense("gnft_prune", epochs=3, grad_change="unit", selection="largest", ratios=(0.25,), **knobs)
    d.defend(SignNet(), clean, progress=False)
    got = {u: g for _, u, _, g, _ in d.report["ranking"]}
    g_s = approx_gradient(SignNet(), clean.features, clean.labels, 0.05, 0.7)[1][0]
    after2 = make_defense("gnft", epochs=2, **knobs).defend(SignNet(), clean, progress=False).train()
    g_t = approx_gradient(after2, clean.features, clean.labels, 0.05, 0.7)[1][0]
    want = (g_t - g_s).reshape(4, -1).norm(dim=1)
    assert want.max() > 1e-4  # the gradient really moved
    np.testing.assert_allclose([got[k] for k in range(4)], want.numpy(), rtol=1e-4, atol=1e-7)
    # one epoch: the first is the last, no change, only the loss change ranks
    d1 = make_defense("gnft_prune", epochs=1, **knobs)
    d1.defend(SignNet(), clean, progress=False)
    assert all(g == 0 for *_, g, _ in d1.report["ranking"])


def test_end_to_end_is_gnft_bit_for_bit_then_pruned_and_chains_on_epoch_end():
    net = fit(build_model("smallcnn", (24, 16), 4, seed=0), template_task(96, (24, 16), 4, seed=1), steps=40)
    clean = template_task(48, (24, 16), 4, seed=3)
    knobs = dict(epochs=2, batch_size=16)
    ref = make_defense("gnft", seed=1, **knobs).defend(copy.deepcopy(net), clean, progress=False)
    seen = []
    d = make_defense("gnft_prune", seed=1, **knobs)
    out = d.defend(copy.deepcopy(net), clean, progress=False, on_epoch_end=lambda e, m: seen.append(e))
    assert seen == [1, 2]
    r = d.report
    assert r["layers"] == ["conv1", "conv2", "conv3"] and r["n_units"] == 64 + 64 + 32
    assert [row["ratio"] for row in r["sweep"]] == [0.0, *AUTHORS_RATIOS]
    pruned = {(n, k) for n, k in r["pruned_units"]}
    assert len(pruned) == r["n_pruned"] == n_to_prune(r["selected_ratio"], 160)
    base = r["clean_acc_before_pruning"]
    kept = next(row for row in r["sweep"] if row["ratio"] == r["selected_ratio"])
    assert (base - kept["clean_acc"]) / base < 0.10
    a, b = out.state_dict(), ref.state_dict()
    for key in a:
        layer = key.rsplit(".", 1)[0]
        if key.endswith(".weight") and layer in r["layers"]:
            for k in range(a[key].shape[0]):
                if (layer, k) in pruned:
                    assert (a[key][k] == 0).all()
                else:
                    assert torch.equal(a[key][k], b[key][k]), (key, k)
        else:
            assert torch.equal(a[key], b[key]), key
    assert not out.training
    import json
    json.dumps(r)  # the store saves it with the metrics


def test_last_conv_option_prunes_only_the_declared_last_convolution():
    net = fit(build_model("smallcnn", (24, 16), 4, seed=0), template_task(96, (24, 16), 4, seed=1), steps=20)
    d = make_defense("gnft_prune", epochs=1, batch_size=24, prune_layers="last_conv", selection="largest")
    d.defend(net, template_task(48, (24, 16), 4, seed=3), progress=False)
    assert d.report["layers"] == ["conv3"] and d.report["n_units"] == 32
    assert {n for n, _ in d.report["pruned_units"]} == {"conv3"} and d.report["n_pruned"] == int(0.9 * 32)


def test_a_model_without_a_convolution_is_refused_naming_it_and_the_part_before_any_work():
    rnn = build_model("rnn", (26, 13), 3)
    before = copy.deepcopy(rnn.state_dict())
    with pytest.raises(DefenseNotApplicable, match=r"^GN-FT\+pruning cannot defend StackedLSTM: it has no last_conv"):
        make_defense("gnft_prune", epochs=1).defend(rnn, template_task(6, (26, 13), 3, seed=0), progress=False)
    assert all(torch.equal(v, before[k]) for k, v in rnn.state_dict().items())
    seq = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Flatten(), nn.Linear(2 * 26 * 13, 3))
    with pytest.raises(DefenseNotApplicable, match="cannot defend Sequential: it does not declare its parts"):
        make_defense("gnft_prune", epochs=1).defend(seq, template_task(6, (26, 13), 3, seed=0), progress=False)


def test_knobs_are_checked():
    with pytest.raises(ValueError, match="field ratios"):
        make_defense("gnft_prune", ratios=(0.1, 1.5))
    with pytest.raises(ValueError, match="field ratios"):
        make_defense("gnft_prune", ratios=())
    with pytest.raises(ValueError, match="field selection"):
        make_defense("gnft_prune", selection="best")
    with pytest.raises(ValueError, match="GN-FT needs r > 0|field r"):
        make_defense("gnft_prune", r=0.0)
    cfg = make_defense("gnft_prune").config
    assert (cfg.r, cfg.alpha, cfg.lr, cfg.momentum, cfg.grad_weight, cfg.loss_threshold) == (0.05, 0.7, 1e-3, 0.9,
                                                                                              0.9, 0.0)
    assert cfg.ratios == AUTHORS_RATIOS and cfg.grad_change == "layer" and cfg.prune_layers == "conv"
