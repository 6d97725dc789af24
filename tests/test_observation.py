"""bdlib.observation: the unit classes, activations and gradient norms behind GN-FT Sec. 3.1."""
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bdlib.observation import (SMALLCNN_LAYERS, classify_units, observation_table, ordering_check, ordering_summary,
                               unit_activations, unit_gradient_norms, unit_loss_changes)


class Tiny(nn.Module):
    """conv -> ReLU -> BN -> flatten -> fc1 -> ReLU -> dropout -> fc2, SmallCNN's pattern in miniature."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, kernel_size=2)
        self.bn = nn.BatchNorm2d(3)
        self.fc1 = nn.Linear(3 * 3 * 3, 5)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(5, 2)

    def forward(self, x):
        h = self.bn(F.relu(self.conv(x))).flatten(1)
        return self.fc2(self.drop(F.relu(self.fc1(h))))


def tiny(seed=0):
    torch.manual_seed(seed)
    return Tiny()


def test_classify_units_produces_each_class_with_the_documented_rule():
    clean = np.array([1.0, 1.0, 1.0, 1.0, 0.0, 0.01, 1.0])
    trig = np.array([2.0, 1.99, 1.25, 0.5, 3.0, 0.01, 1.5])
    labels = classify_units(clean, trig, backdoor_ratio=2.0, clean_ratio=1.25, dormant_fraction=0.1)
    assert list(labels) == ["backdoor",  # ratio exactly 2: backdoor (>=)
                            "hybrid",  # just under 2
                            "clean",  # ratio exactly 1.25: clean (<=)
                            "clean",  # lowered by the trigger
                            "backdoor",  # silent on clean, fires on triggered: ratio inf
                            "dormant",  # peak 0.01 <= 0.1 * median peak (1.5)
                            "hybrid"]


def test_classify_units_thresholds_are_honoured():
    clean, trig = np.ones(3), np.array([1.5, 3.0, 1.1])
    assert list(classify_units(clean, trig)) == ["hybrid", "backdoor", "clean"]
    assert list(classify_units(clean, trig, backdoor_ratio=1.4)) == ["backdoor", "backdoor", "clean"]
    assert list(classify_units(clean, trig, clean_ratio=1.0)) == ["hybrid", "backdoor", "hybrid"]
    # the dormant threshold is relative to the layer's median peak
    c, t = np.array([1.0, 1.0, 0.3]), np.array([1.0, 1.0, 0.3])
    assert classify_units(c, t, dormant_fraction=0.2)[2] == "clean"
    assert classify_units(c, t, dormant_fraction=0.4)[2] == "dormant"


def test_classify_units_edge_cases():
    assert list(classify_units(np.zeros(4), np.zeros(4))) == ["dormant"] * 4
    assert classify_units(np.zeros(0), np.zeros(0)).shape == (0,)
    # most units dead: the median peak is 0, only units that never fire are dormant
    assert list(classify_units(np.array([0, 0, 0, 2.0]), np.array([0, 0, 0, 5.0]))) == ["dormant"] * 3 + ["backdoor"]
    with pytest.raises(ValueError, match="clean_ratio"):
        classify_units(np.ones(2), np.ones(2), backdoor_ratio=1.2, clean_ratio=1.5)
    with pytest.raises(ValueError, match="one shape"):
        classify_units(np.ones(2), np.ones(3))
    with pytest.raises(ValueError, match=">= 0"):
        classify_units(np.array([-1.0]), np.array([1.0]))


def test_unit_activations_hooks_the_post_relu_pre_bn_output():
    net = tiny()
    with torch.no_grad():
        net.conv.bias[0] = -10.0  # channel 0 never fires: post-ReLU mean 0, pre-ReLU mean < 0
        net.bn.running_mean.fill_(5.0)  # a BN output would differ from the ReLU output
    x = torch.randn(7, 1, 4, 4)
    acts = unit_activations(net, ["conv", "fc1"], x, batch_size=3)
    with torch.no_grad():
        h = F.relu(net.conv(x))
        expected_conv = h.mean((0, 2, 3))
        expected_fc1 = F.relu(net.fc1(net.bn.eval()(h).flatten(1))).mean(0)
    np.testing.assert_allclose(acts["conv"], expected_conv.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(acts["fc1"], expected_fc1.numpy(), rtol=1e-5, atol=1e-6)
    assert acts["conv"][0] == 0.0


def test_unit_activations_restores_the_mode_and_rejects_non_unit_layers():
    net = tiny().train()
    unit_activations(net, ["conv"], torch.randn(2, 1, 4, 4))
    assert net.training
    with pytest.raises(ValueError, match="not a conv or linear"):
        unit_activations(net, ["bn"], torch.randn(2, 1, 4, 4))
    with pytest.raises(ValueError, match="no layer 'conv9'.*conv, fc1, fc2"):
        unit_activations(net, ["conv9"], torch.randn(2, 1, 4, 4))


def test_unit_gradient_norms_matches_a_manual_computation():
    net = tiny().eval()
    x, y = torch.randn(7, 1, 4, 4), torch.tensor([0, 1, 1, 0, 1, 0, 0])
    norms = unit_gradient_norms(net, ["conv", "fc1"], x, y, batch_size=3, mode="eval")  # 3 batches, summed
    loss = F.cross_entropy(net(x), y)
    gw, gb, fw, fb = torch.autograd.grad(loss, [net.conv.weight, net.conv.bias, net.fc1.weight, net.fc1.bias])
    for u in range(3):
        expected = torch.sqrt(gw[u].pow(2).sum() + gb[u] ** 2).item()
        assert norms["conv"][u] == pytest.approx(expected, rel=1e-5)
    assert norms["fc1"][4] == pytest.approx(torch.sqrt(fw[4].pow(2).sum() + fb[4] ** 2).item(), rel=1e-5)
    assert norms["conv"].shape == (3,) and norms["fc1"].shape == (5,)


def test_unit_gradient_norms_train_mode_is_seeded_and_leaves_the_model_alone():
    net = tiny()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = torch.randn(8, 1, 4, 4), torch.randint(0, 2, (8,))
    a = unit_gradient_norms(net, ["fc1"], x, y, batch_size=4, mode="train", seed=1)
    b = unit_gradient_norms(net, ["fc1"], x, y, batch_size=4, mode="train", seed=1)
    c = unit_gradient_norms(net, ["fc1"], x, y, batch_size=4, mode="train", seed=2)
    np.testing.assert_array_equal(a["fc1"], b["fc1"])
    assert not np.allclose(a["fc1"], c["fc1"])  # another dropout mask
    for k, v in net.state_dict().items():  # BN running stats and weights untouched
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in net.parameters())
    with pytest.raises(ValueError, match="unknown gradient mode 'test'"):
        unit_gradient_norms(net, ["fc1"], x, y, mode="test")


def test_observation_table_classes_follow_the_reference_model():
    victim, later = tiny(0), tiny(1)
    x = torch.randn(6, 1, 4, 4)
    trig = x.clone()
    trig[:, :, :2, :2] += 3.0  # a "trigger" patch
    table = observation_table("toy", {"victim": victim, "after FT": later}, ["conv", "fc1"], x, trig, x,
                              torch.tensor([0, 1] * 3), batch_size=4)
    assert list(table.columns) == ["attack", "stage", "layer", "unit", "class", "class_at_stage", "grad_norm",
                                   "act_clean", "act_triggered"]
    assert len(table) == 2 * (3 + 5)
    v = table[table.stage == "victim"].reset_index(drop=True)
    f = table[table.stage == "after FT"].reset_index(drop=True)
    assert list(v["class"]) == list(f["class"])  # the victim's classes carried over
    assert list(v["class"].astype(str)) == list(v["class_at_stage"].astype(str))
    acts = unit_activations(victim, ["conv"], trig)["conv"]
    np.testing.assert_allclose(v.loc[v.layer == "conv", "act_triggered"], acts, rtol=1e-5)
    with pytest.raises(ValueError, match="reference stage 'victim'"):
        observation_table("toy", {"after FT": later}, ["conv"], x, trig, x, torch.zeros(6, dtype=torch.long))


def _table(grads: dict):
    rows = [{"attack": "a", "stage": "victim", "layer": "l", "class": cls, "grad_norm": g}
            for cls, values in grads.items() for g in values]
    return pd.DataFrame(rows)


def test_ordering_check_flags_an_ordering_that_does_not_hold():
    good = ordering_check(_table({"backdoor": [3, 4], "hybrid": [2], "clean": [1, 0.5], "dormant": [9]}))
    assert bool(good.loc[0, "holds"]) and bool(good.loc[0, "backdoor_gt_clean"])
    assert good.loc[0, "median_backdoor"] == 3.5 and good.loc[0, "n_clean"] == 2
    bad = ordering_check(_table({"backdoor": [1.0], "hybrid": [2.0], "clean": [0.5]}))
    assert not bool(bad.loc[0, "holds"]) and bool(bad.loc[0, "backdoor_gt_clean"])
    reversed_ = ordering_check(_table({"backdoor": [0.1], "hybrid": [2.0], "clean": [0.5]}))
    assert not bool(reversed_.loc[0, "backdoor_gt_clean"])
    missing = ordering_check(_table({"backdoor": [3.0], "clean": [1.0]}))
    assert pd.isna(missing.loc[0, "holds"]) and np.isnan(missing.loc[0, "median_hybrid"])
    assert bool(missing.loc[0, "backdoor_gt_clean"])
    summary = ordering_summary(pd.concat([good, bad, missing], ignore_index=True))
    assert summary.startswith("backdoor > hybrid > clean (median gradient norm) holds in 1 of 2 groups")
    assert "(1 of 3 groups lack a class)" in summary and "backdoor > clean holds in 3 of 3" in summary


def test_smallcnn_layers_have_the_expected_units():
    from bdlib.models import build_model

    net = build_model("smallcnn", (101, 40), 10, seed=0)
    acts = unit_activations(net, SMALLCNN_LAYERS, torch.randn(2, 1, 101, 40))
    assert {k: v.shape for k, v in acts.items()} == {"conv1": (64,), "conv2": (64,), "conv3": (32,), "fc1": (128,)}
    assert all((v >= 0).all() for v in acts.values())


def test_unit_loss_changes_match_pruning_by_hand_and_restore_the_model():
    import copy

    net = tiny().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = torch.randn(7, 1, 4, 4), torch.tensor([0, 1, 1, 0, 1, 0, 0])
    changes = unit_loss_changes(net, ["conv", "fc1"], x, y, batch_size=3)
    with torch.no_grad():
        base = F.cross_entropy(net(x), y).item()
        for layer, units in (("conv", 3), ("fc1", 5)):
            for u in range(units):
                pruned = copy.deepcopy(net)
                getattr(pruned, layer).weight[u] = 0.0  # the weight row only, the bias kept (prune_one_neuron)
                expected = F.cross_entropy(pruned(x), y).item() - base
                assert changes[layer][u] == pytest.approx(expected, abs=1e-5), (layer, u)
    assert changes["conv"].shape == (3,) and changes["fc1"].shape == (5,)
    assert np.abs(changes["conv"]).max() > 1e-4  # not trivially zero
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_classify_by_loss_change_quadrants():
    from bdlib.observation import classify_by_loss_change

    clc = np.array([-0.1, 0.2, 0.3, 0.0, 0.05])
    blc = np.array([0.4, 0.5, -0.2, 0.0, 0.05])
    assert list(classify_by_loss_change(clc, blc)) == ["backdoor", "hybrid", "clean", "dormant", "hybrid"]
    assert list(classify_by_loss_change(clc, blc, threshold=0.1)) == ["backdoor", "hybrid", "clean", "dormant",
                                                                      "dormant"]


def test_observation_table_adds_more_classes_per_unit():
    victim, later = tiny(0), tiny(1)
    x = torch.randn(4, 1, 4, 4)
    lc = {"conv": np.array(["backdoor", "clean", "hybrid"]), "fc1": np.array(["clean"] * 4 + ["dormant"])}
    table = observation_table("toy", {"victim": victim, "after FT": later}, ["conv", "fc1"], x, x + 1, x,
                              torch.tensor([0, 1, 0, 1]), more_classes={"class_lc": lc})
    for stage in ("victim", "after FT"):
        rows = table[(table.stage == stage) & (table.layer == "conv")].sort_values("unit")
        assert list(rows["class_lc"].astype(str)) == ["backdoor", "clean", "hybrid"]
    last = table[(table.layer == "fc1") & (table.unit == 4)]
    assert last["class_lc"].astype(str).unique().tolist() == ["dormant"]
    part = observation_table("toy", {"victim": victim}, ["conv", "fc1"], x, x, x, torch.tensor([0, 1, 0, 1]),
                             more_classes={"class_lc": {"fc1": lc["fc1"]}})
    assert part.loc[part.layer == "conv", "class_lc"].isna().all()
    assert part.loc[part.layer == "fc1", "class_lc"].notna().all()
    with pytest.raises(ValueError, match="has 2 labels for 3 units"):
        observation_table("toy", {"victim": victim}, ["conv"], x, x, x, torch.tensor([0, 1, 0, 1]),
                          more_classes={"class_lc": {"conv": lc["conv"][:2]}})


def test_unit_layers_come_from_the_model_and_leave_out_its_classifier():
    from bdlib.models import MODELS, build_model
    from bdlib.observation import unit_layers

    assert unit_layers(build_model("smallcnn", (101, 40), 10)) == SMALLCNN_LAYERS
    for name in MODELS.names():
        net = build_model(name, (101, 40), 10)
        found = unit_layers(net)
        assert net.classifier not in found, name
        if name in ("smallcnn", "largecnn", "resnet"):  # the CNNs have hidden conv/linear units
            assert len(found) >= 3, (name, found)
        assert all(isinstance(net.get_submodule(n), (torch.nn.Conv2d, torch.nn.Conv1d, torch.nn.Linear)) for n in found)


def test_ordering_over_seeds_counts_tested_and_held_seeds_per_group():
    from bdlib.observation import ordering_over_seeds

    b = pd.array
    check = pd.DataFrame({"attack": ["a"] * 3 + ["b"] * 3, "stage": "victim", "layer": "fc1", "seed": [0, 1, 2] * 2,
                          "holds": b([True, pd.NA, False, False, False, True], dtype="boolean"),
                          "backdoor_gt_clean": b([True, True, False, pd.NA, True, True], dtype="boolean")})
    out = ordering_over_seeds(check).set_index("attack")
    assert out.loc["a", ["seeds", "full_tested", "full_held", "weak_tested", "weak_held"]].tolist() == [3, 2, 1, 3, 2]
    assert out.loc["b", ["seeds", "full_tested", "full_held", "weak_tested", "weak_held"]].tolist() == [3, 3, 1, 2, 2]
    with pytest.raises(ValueError, match="several rows"):
        ordering_over_seeds(pd.concat([check, check]))
    with pytest.raises(ValueError, match="seed"):
        ordering_over_seeds(check.drop(columns="seed"))


class _Residual(torch.nn.Module):
    """A conv inside a residual block (its output is added to the block's input), then a head."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 3, 3, padding=1)
        self.inner = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.fc = torch.nn.Linear(3, 2)

    def forward(self, x):
        h = F.relu(self.stem(x))
        h = F.relu(self.inner(h) + h)
        return self.fc(h.mean((2, 3)))


def _pruned_by_hand(net, layers, x, y):
    import copy

    with torch.no_grad():
        base = F.cross_entropy(net(x), y).item()
        out = {}
        for layer in layers:
            changes = []
            for u in range(getattr(net, layer).weight.shape[0]):
                pruned = copy.deepcopy(net)
                getattr(pruned, layer).weight[u] = 0.0
                changes.append(F.cross_entropy(pruned(x), y).item() - base)
            out[layer] = np.array(changes)
    return out


def test_unit_loss_changes_inside_a_residual_block_agree_with_pruning_by_hand():
    """A layer whose output meets a residual shortcut (where a batched shortcut for all units at
    once would not pass) is scored like any other: one zeroed unit per pass."""
    torch.manual_seed(1)
    net = _Residual().eval()
    x, y = torch.randn(5, 1, 4, 4), torch.tensor([0, 1, 1, 0, 1])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    changes = unit_loss_changes(net, ["stem", "inner", "fc"], x, y, batch_size=2)
    expected = _pruned_by_hand(net, ["stem", "inner", "fc"], x, y)
    for layer in expected:
        np.testing.assert_allclose(changes[layer], expected[layer], atol=1e-5)
    assert np.abs(changes["inner"]).max() > 1e-4
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


class _BatchStats(torch.nn.Module):
    """A layer followed by normalisation over the batch in eval mode: copies of the layer's
    output for every unit, batched together, would be normalised with each other."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(4, 3)
        self.norm = torch.nn.BatchNorm1d(3, track_running_stats=False)
        self.fc2 = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.fc2(F.relu(self.norm(self.fc1(x))))


class _PerStep(torch.nn.Module):
    """A linear layer on a sequence (its output is (clips, steps, units)): the unit axis is not
    the second."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 3)
        self.fc = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(F.relu(self.proj(x)).mean(1))


@pytest.mark.parametrize("net,shape", [(_BatchStats, (6, 4)), (_PerStep, (6, 5, 4))])
def test_layers_a_batched_shortcut_would_get_wrong_agree_with_pruning_by_hand(net, shape):
    torch.manual_seed(2)
    net, x = net().eval(), torch.randn(*shape)
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    layer = next(iter(dict(net.named_children())))
    changes = unit_loss_changes(net, [layer], x, y, batch_size=12)
    np.testing.assert_allclose(changes[layer], _pruned_by_hand(net, [layer], x, y)[layer], atol=1e-5)


def test_a_unit_whose_pruning_changes_nothing_is_dormant():
    """A dead ReLU unit (its pre-activation -1 on every clip): zeroing it changes nothing,
    so both loss changes are exactly 0 (the pruned pass is batched as the unpruned one), not
    rounding noise whose sign would pick its class."""
    from bdlib.observation import classify_by_loss_change

    torch.manual_seed(3)
    net = tiny().eval()
    with torch.no_grad():
        net.fc1.weight[2] = 0.0  # unit 2's pre-activation is its bias, -1: it never fires
        net.fc1.bias[2] = -1.0
    x, y = torch.rand(7, 1, 4, 4), torch.tensor([0, 1, 1, 0, 1, 0, 0])
    clean = unit_loss_changes(net, ["fc1"], x, y, batch_size=64)["fc1"]
    backdoor = unit_loss_changes(net, ["fc1"], x, torch.zeros(7, dtype=torch.long), batch_size=64)["fc1"]
    assert clean[2] == 0.0 and backdoor[2] == 0.0
    assert classify_by_loss_change(clean, backdoor)[2] == "dormant"
    np.testing.assert_allclose(clean, _pruned_by_hand(net, ["fc1"], x, y)["fc1"], atol=1e-5)
    assert np.count_nonzero(clean) >= 2  # the live units keep their changes
