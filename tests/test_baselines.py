"""Fine-Pruning, FT-SAM and CLP: the model-level baselines the GN-FT paper compares."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bdlib.defenses import CleanData, make_defense
from bdlib.defenses.anp import BACKDOORBENCH, prune_by_sweep, sweep_thresholds
from bdlib.defenses.clp import channel_lipschitz, conv_bn_pairs
from bdlib.defenses.fp import mean_activation
from bdlib.defenses.gnft import approx_gradient
from bdlib.defenses.ibau import implicit_hypergradient
from bdlib.models import build_model
from bdlib.registry import InvalidFieldError


# a small MFCC-map shape: these tests are about the defenses' mechanics, which do not depend on
# the input size; 40 x 20 runs SmallCNN ~5x faster than the pipeline's 101 x 40 (CI time)
SHAPE = (40, 20)


def _clean(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return CleanData(torch.randn(n, 1, *SHAPE, generator=g) * 20, torch.randint(0, 10, (n,), generator=g))


def _trained_net(clean):
    net = build_model("smallcnn", SHAPE, 10)
    make_defense("ft", epochs=5, batch_size=20, lr=0.05).defend(net, clean, progress=False)
    return net


def test_fp_prunes_exactly_the_units_it_reports():
    clean = _clean()
    net = _trained_net(clean)
    fp = make_defense("fp", epochs=2, batch_size=20, max_acc_drop=0.5)
    out = fp.defend(net, clean, progress=False)
    rep = fp.report
    assert rep["layer"] == "fc2" and rep["n_units"] == 128 and rep["n_pruned"] == len(rep["pruned_units"]) > 0
    w = out.fc2.weight.detach()
    dead = (w == 0).all(dim=0)
    assert sorted(torch.nonzero(dead).flatten().tolist()) == rep["pruned_units"]  # pruned columns stay zero after FT
    curve = rep["clean_acc_curve"]
    assert curve[0][0] == 0 and all(k > 0 for k, _ in curve[1:])


def test_fp_ranks_by_mean_activation():
    clean = _clean()
    net = _trained_net(clean)
    acts = mean_activation(net, net.fc2, clean.features, of_input=True)
    fp = make_defense("fp", epochs=0, max_acc_drop=0.99)
    fp.defend(copy.deepcopy(net), clean, progress=False)
    pruned = fp.report["pruned_units"]
    kept = sorted(set(range(128)) - set(pruned))
    assert acts[pruned].max() <= acts[kept].min()


def test_fp_last_conv_zeroes_filter_and_norm():
    clean = _clean()
    net = _trained_net(clean)
    fp = make_defense("fp", layer="last_conv", epochs=1, batch_size=20, max_acc_drop=0.5)
    out = fp.defend(net, clean, progress=False)
    idx = fp.report["pruned_units"]
    assert fp.report["layer"] == "conv3" and len(idx) > 0
    assert torch.all(out.conv3.weight[idx] == 0) and torch.all(out.bn3.weight[idx] == 0) and torch.all(out.bn3.bias[idx] == 0)


def test_fp_rejects_models_without_named_layers():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4040, 10))
    with pytest.raises(ValueError, match="Fine-Pruning cannot defend Sequential: .*classifier"):
        make_defense("fp").defend(net, _clean(), progress=False)


def _optimizer_spy(monkeypatch, name):
    """Replace ``torch.optim.<name>`` by a subclass that records each instance and counts its steps."""
    made, base = [], getattr(torch.optim, name)

    class Spy(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.steps = 0
            made.append(self)

        def step(self, *args, **kwargs):
            self.steps += 1
            return super().step(*args, **kwargs)

    monkeypatch.setattr(torch.optim, name, Spy)
    return made


def test_fp_authors_finetune_is_one_epoch_of_adam(monkeypatch):
    """finetune="authors" (Audio-Backdoor-Attack fp.py:202-203): Adam at lr 0.01, no weight
    decay, one epoch whatever ``epochs`` says; the default stays SGD for ``epochs``."""
    clean = _clean()  # 40 clips, batch 20: two steps per epoch
    net = _trained_net(clean)
    adam, sgd = _optimizer_spy(monkeypatch, "Adam"), _optimizer_spy(monkeypatch, "SGD")
    fp = make_defense("fp", epochs=5, batch_size=20, max_acc_drop=0.5, prune_step=0.1, finetune="authors")
    out = fp.defend(copy.deepcopy(net), clean, progress=False)
    assert not sgd and len(adam) == 1 and adam[0].steps == 2
    assert adam[0].defaults["lr"] == 0.01 and adam[0].defaults["weight_decay"] == 0
    assert (fp.report["finetune_optimizer"], fp.report["finetune_epochs"]) == ("Adam", 1)
    dead = (out.fc2.weight.detach() == 0).all(dim=0)
    assert sorted(torch.nonzero(dead).flatten().tolist()) == fp.report["pruned_units"] != []  # pruned stay zero
    assert not torch.equal(out.fc1.weight, net.fc1.weight)  # and the rest was fine-tuned
    adam.clear()
    default = make_defense("fp", epochs=2, batch_size=20, max_acc_drop=0.5, prune_step=0.1)
    default.defend(copy.deepcopy(net), clean, progress=False)
    assert not adam and sgd[-1].steps == 4 and default.report["finetune_optimizer"] == "SGD"
    with pytest.raises(InvalidFieldError, match="field finetune = 'adam'"):
        make_defense("fp", finetune="adam")


def _sam_problem():
    """A tiny MLP, a batch, its parameters and their clean gradient."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(16, 1, 3, 4), torch.randint(0, 3, (16,))
    params = list(net.parameters())
    return net, x, y, params, torch.autograd.grad(F.cross_entropy(net(x), y), params)


def test_ftsam_gradient_is_sam():
    """FT-SAM's step is the gradient at θ + ρ g/‖g‖ (global norm)."""
    net, x, y, params, g = _sam_problem()
    norm = torch.sqrt(sum((t * t).sum() for t in g))
    ref = copy.deepcopy(net)
    with torch.no_grad():
        for p, t in zip(ref.parameters(), g):
            p.add_(0.5 * t / norm)
    expected = torch.autograd.grad(F.cross_entropy(ref(x), y), list(ref.parameters()))
    _, got = approx_gradient(net, x, y, r=0.5, alpha=1.0, norm="global")
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


def test_ftsam_adaptive_step_is_a_unit_ball_in_weight_relative_coordinates():
    """ASAM's perturbation e = ρ·w²g/‖|w|g‖ has ‖e / |w|‖ = ρ, and the gradient is taken there."""
    net, x, y, params, g = _sam_problem()
    total = torch.sqrt(sum(((p.abs() * t) ** 2).sum() for p, t in zip(params, g)))
    steps = [0.5 * p.detach() ** 2 * t / total for p, t in zip(params, g)]
    rel = torch.sqrt(sum(((s / p.detach().abs()) ** 2).sum() for s, p in zip(steps, params)))
    assert abs(rel.item() - 0.5) < 1e-4
    ref = copy.deepcopy(net)
    with torch.no_grad():
        for p, s in zip(ref.parameters(), steps):
            p.add_(s)
    expected = torch.autograd.grad(F.cross_entropy(ref(x), y), list(ref.parameters()))
    before = [p.detach().clone() for p in params]
    _, got = approx_gradient(net, x, y, r=0.5, alpha=1.0, norm="adaptive")
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(params, before))  # weights restored (up to rounding)
    _, plain = approx_gradient(net, x, y, r=0.5, alpha=1.0, norm="global")
    assert any(not torch.allclose(a, b) for a, b in zip(got, plain))


def test_ftsam_defends_and_keeps_architecture(monkeypatch):
    """Every step is the SAM step with FT-SAM's own knobs: radius rho, the whole perturbed-point
    gradient (alpha 1), the ASAM ball only when adaptive, and label smoothing in the loss."""
    import bdlib.defenses.ftsam as ftsam

    clean = _clean()
    net = _trained_net(clean)
    calls = []

    def spy(model, x, y, **kw):
        calls.append(kw)
        return approx_gradient(model, x, y, **kw)

    monkeypatch.setattr(ftsam, "approx_gradient", spy)
    weights = {}
    for adaptive in (True, False):
        calls.clear()
        out = make_defense("ftsam", epochs=2, batch_size=20, rho=0.7, adaptive=adaptive,
                           label_smoothing=0.2).defend(copy.deepcopy(net), clean, progress=False)
        assert list(out.state_dict()) == list(net.state_dict())
        assert out(clean.features[:2]).shape == (2, 10)
        assert len(calls) == 2 * -(-len(clean) // 20)  # one SAM gradient per step
        assert {(kw["r"], kw["alpha"], kw["norm"]) for kw in calls} == {(0.7, 1.0, "adaptive" if adaptive else "global")}
        logits, target = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])
        assert calls[0]["loss_fn"](logits, target).item() == pytest.approx(
            F.cross_entropy(logits, target, label_smoothing=0.2).item())
        weights[adaptive] = [p.detach().clone() for p in out.parameters()]
        assert any(not torch.equal(a, b) for a, b in zip(weights[adaptive], net.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(weights[True], weights[False]))


def test_clp_prunes_the_outlier_channel_without_data():
    net = build_model("smallcnn", SHAPE, 10).eval()
    with torch.no_grad():
        net.conv2.weight[7] *= 50  # one channel with an abnormal Lipschitz bound
    lips = channel_lipschitz(net.conv2, net.bn2)
    assert int(torch.argmax(lips)) == 7
    clp = make_defense("clp", u=3.0)
    out = clp.defend(net, None, progress=False)
    assert 7 in clp.report["pruned_channels"]["conv2"]
    assert out.bn2.weight[7] == 0 and out.bn2.bias[7] == 0
    assert [n for n, _, _ in conv_bn_pairs(net)] == ["conv1", "conv2", "conv3"]


def test_clp_rejects_models_without_conv_bn():
    with pytest.raises(ValueError, match="CLP cannot defend Sequential: .*conv_norm_pairs"):
        make_defense("clp").defend(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), None)


def test_attention_map_is_normalised_channel_energy():
    from bdlib.defenses.nad import attention_map

    fm = torch.zeros(2, 3, 4, 5)
    fm[0, :, 1, 2] = 2.0
    a = attention_map(fm, p=2)
    assert a.shape == (2, 20) and torch.isclose(a[0].norm(), torch.tensor(1.0))
    assert int(a[0].argmax()) == 1 * 5 + 2 and torch.all(a[1] == 0)


def test_nad_keeps_architecture_removes_hooks_and_checks_its_layers():
    clean = _clean()
    net = _trained_net(clean)
    nad = make_defense("nad", teacher_epochs=2, epochs=3, batch_size=20)
    out = nad.defend(copy.deepcopy(net), clean, progress=False)
    assert list(out.state_dict()) == list(net.state_dict())
    assert not any(m._forward_hooks for m in out.modules())  # hooks removed
    with pytest.raises(ValueError, match="NAD cannot defend Sequential: .*attention_layers"):
        make_defense("nad").defend(nn.Sequential(nn.Flatten(), nn.Linear(4040, 10)), clean, progress=False)
    with pytest.raises(ValueError, match="2 betas for 3 attention layers"):
        make_defense("nad", betas=(1.0, 2.0)).defend(copy.deepcopy(net), clean, progress=False)


def test_tsbd_unlearns_then_zeroes_the_most_changed_neurons():
    from bdlib.defenses.tsbd import clean_unlearn

    clean = _clean()
    net = _trained_net(clean)
    # clean unlearning really destroys clean accuracy (that is what exposes the weight changes)
    probe = copy.deepcopy(net)
    epochs, acc = clean_unlearn(probe, clean, lr=1e-3, max_epochs=50, floor=0.1, batch_size=20, seed=0)
    majority = torch.bincount(clean.labels).max().item() / len(clean)
    assert acc <= max(0.1, majority) and 1 <= epochs <= 50
    tsbd = make_defense("tsbd", epochs=0, batch_size=20, unlearn_lr=1e-3, neuron_ratio=0.1, weight_ratio=1.0)
    before = {n: m.weight.detach().clone() for n, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    out = tsbd.defend(net, clean, progress=False)
    rep = tsbd.report
    n_neurons = sum(w.shape[0] for w in before.values())
    assert rep["n_neurons"] == n_neurons and len(rep["reinitialised"]) == round(0.1 * n_neurons)
    convs = dict(out.named_modules())
    for name, k in rep["reinitialised"]:  # weight_ratio 1: the whole neuron is zeroed, nothing else touched
        assert torch.all(convs[name].weight[k] == 0)
    untouched = {(n, k) for n, w in before.items() for k in range(w.shape[0])} - {tuple(x) for x in rep["reinitialised"]}
    assert all(torch.equal(convs[n].weight[k], before[n][k]) for n, k in untouched)
    assert rep["n_weights_zeroed"] == sum(before[n][k].numel() for n, k in rep["reinitialised"])


def test_tsbd_rejects_models_without_convolutions_and_bad_ratios():
    clean = _clean(8)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(SHAPE[0] * SHAPE[1], 10))
    with pytest.raises(ValueError, match="no nn.Conv2d layer"):
        make_defense("tsbd", epochs=1).defend(mlp, clean, progress=False)
    with pytest.raises(ValueError, match="neuron_ratio"):
        make_defense("tsbd", neuron_ratio=0)


def test_anp_prunes_exactly_the_channels_whose_mask_fell_below_threshold():
    clean = _clean()
    net = _trained_net(clean)
    before = copy.deepcopy(net)
    anp = make_defense("anp", epochs=8, batch_size=20, threshold=0.5)
    out = anp.defend(net, clean, progress=False)
    rep = anp.report
    assert rep["n_channels"] == sum(m.num_features for m in out.modules() if isinstance(m, nn.BatchNorm2d))
    mods, old = dict(out.named_modules()), dict(before.named_modules())
    for name, idx in rep["pruned_channels"].items():
        mask = torch.tensor(rep["masks"][name])
        assert sorted(idx) == torch.nonzero(mask < 0.5).flatten().tolist()
        assert torch.all(mods[name].weight[idx] == 0)
        keep = [k for k in range(len(mask)) if k not in idx]
        assert torch.equal(mods[name].weight[keep], old[name].weight[keep])  # masks are not baked in
    assert all(0 <= v <= 1 for m in rep["masks"].values() for v in m)
    assert any(v < 1 for m in rep["masks"].values() for v in m)  # the adversarial objective moved the masks
    assert all(p.requires_grad for p in out.parameters())  # the model is handed back trainable
    x = clean.features[:4]
    assert out(x).shape == (4, 10)


def test_anp_rejects_models_without_batchnorm():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(SHAPE[0] * SHAPE[1], 10))
    with pytest.raises(ValueError, match="ANP cannot defend Sequential: .*norm_layers"):
        make_defense("anp", epochs=1).defend(mlp, _clean(8), progress=False)


class _LogitChannels(nn.Module):
    """Five BatchNorm channels that are the logits (identity in eval mode). Pruning channel k
    (weight 0, bias 0) sets logit k to 0, so every clip of class k, whose other logits are 0.5,
    is then misclassified; channel 4 is a decoy that outvotes class 3 on some clips."""

    norm_layers = ("bn",)

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(5).eval()

    def forward(self, x):
        return self.bn(x).flatten(1)


def _logit_task():
    """100 clips: 2 of class 0, 3 of class 1, 10 of class 2, 85 of class 3 (10 of them with the
    decoy channel at 2.0, so the unpruned model is right on 90)."""
    labels = torch.tensor([0] * 2 + [1] * 3 + [2] * 10 + [3] * 85)
    x = torch.full((100, 5), 0.5)
    x[torch.arange(100), labels] = 1.0
    x[15:25, 4] = 2.0
    return CleanData(x.view(100, 5, 1, 1), labels)


def test_anp_sweep_keeps_the_largest_pruning_within_the_accuracy_bound():
    """Masks 0 / .12 / .33 / .61 / .52: the sweep prunes {0} (acc .88), {0,1} (.85), {0,1,2} (.75,
    17 % down: out of bound), {0,1,2,4} (.85: the decoy gone), all (0). The answer is {0,1,2,4} at
    0.55, past an out-of-bound threshold; a mask of exactly 0 is pruned at threshold 0 (<=)."""
    net, clean = _LogitChannels().eval(), _logit_task()
    masks = {"bn": torch.tensor([0.0, 0.12, 0.33, 0.61, 0.52])}
    thresholds = sweep_thresholds(0.90, 0.05)
    assert thresholds == [round(0.05 * k, 2) for k in range(19)]
    pruned, rep = prune_by_sweep(net, {"bn": net.bn}, masks, clean, thresholds, max_acc_drop=0.10)
    assert pruned == {"bn": [0, 1, 2, 4]} and rep["selected_threshold"] == 0.55
    assert rep["clean_acc_before"] == pytest.approx(0.90)
    by_t = {r["threshold"]: (round(r["acc"], 6), r["n_pruned"]) for r in rep["sweep"]}
    assert list(by_t) == thresholds
    assert by_t[0.0] == (0.88, 1) and by_t[0.15] == (0.85, 2) and by_t[0.35] == (0.75, 3)
    assert by_t[0.55] == (0.85, 4) and by_t[0.65] == (0.02, 5) and by_t[0.9] == (0.02, 5)  # all 0: argmax 0
    assert net.bn.weight.tolist() == [0.0, 0.0, 0.0, 1.0, 0.0]
    assert (net(clean.features).argmax(1) == clean.labels).float().mean().item() == pytest.approx(0.85)
    # a bound nothing meets (even threshold 0 costs 2 %): nothing is pruned
    net = _LogitChannels().eval()
    pruned, rep = prune_by_sweep(net, {"bn": net.bn}, masks, clean, thresholds, max_acc_drop=0.01)
    assert pruned == {"bn": []} and rep["selected_threshold"] is None and len(rep["sweep"]) == 19
    assert net.bn.weight.tolist() == [1.0] * 5


def test_anp_sweep_report_lists_every_threshold_and_the_model_matches_it(monkeypatch):
    """Through ``defend``: the sweep gets the configured grid and bound (the selection rule
    itself is the test above), the report lists every threshold with its clean accuracy and
    pruned count, and the returned model is the selected row's."""
    from bdlib.defenses import anp as anp_module

    calls = []

    def spy(model, bns, masks, clean, thresholds, max_acc_drop):
        calls.append((thresholds, max_acc_drop, {n: m.tolist() for n, m in masks.items()}))
        return prune_by_sweep(model, bns, masks, clean, thresholds, max_acc_drop)

    monkeypatch.setattr(anp_module, "prune_by_sweep", spy)
    clean = _clean()
    net = _trained_net(clean)
    anp = make_defense("anp", iterations=6, batch_size=40, mask_lr=2.0, selection="sweep", sweep_max=0.6,
                       sweep_step=0.1, max_acc_drop=0.05)
    out = anp.defend(net, clean, progress=False)
    rep = anp.report
    assert len(calls) == 1 and calls[0][:2] == ([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6], 0.05)
    assert calls[0][2] == rep["masks"]
    assert rep["selection"] == "sweep" and rep["mask_steps"] == 6
    assert [r["threshold"] for r in rep["sweep"]] == calls[0][0]
    masks = torch.cat([torch.tensor(m) for m in rep["masks"].values()])
    for r in rep["sweep"]:
        assert r["n_pruned"] == int((masks <= r["threshold"]).sum())
    base = rep["clean_acc_before"]
    best = max((r for r in rep["sweep"] if (base - r["acc"]) / base < 0.05), key=lambda r: r["n_pruned"])
    assert rep["n_pruned"] == best["n_pruned"] > 0 and rep["selected_threshold"] == best["threshold"]
    mods = dict(out.named_modules())
    for name, idx in rep["pruned_channels"].items():
        mask = torch.tensor(rep["masks"][name])
        assert idx == torch.nonzero(mask <= best["threshold"]).flatten().tolist()
        assert torch.all(mods[name].weight[idx] == 0)
    acc = (out(clean.features).argmax(1) == clean.labels).float().mean().item()
    assert acc == pytest.approx(best["acc"])


def test_anp_iterations_are_mask_steps_on_batches_drawn_with_replacement():
    """``iterations``: that many mask steps of ``batch_size`` clips each (BackdoorBench's
    RandomSampler with replacement: 64 from 40 clips); without it, ``epochs`` passes."""
    clean = _clean()
    net = _trained_net(clean)
    seen = []
    net.register_forward_pre_hook(lambda m, inp: seen.append(len(inp[0])))
    anp = make_defense("anp", iterations=5, batch_size=64, eps=0.0, epochs=50)  # eps 0: one forward per step
    anp.defend(copy.deepcopy(net), clean, progress=False)
    assert seen == [64] * 5 and anp.report["mask_steps"] == 5
    seen.clear()
    anp = make_defense("anp", epochs=2, batch_size=64, eps=0.0)
    anp.defend(copy.deepcopy(net), clean, progress=False)
    assert seen == [40, 40] and anp.report["mask_steps"] == 2


def test_anp_refuses_bad_selection_knobs_by_name():
    for knobs, field in (({"selection": "best"}, "selection"), ({"iterations": 0}, "iterations"),
                         ({"sweep_step": 0.0}, "sweep_step"), ({"sweep_max": 1.0}, "sweep_max"),
                         ({"max_acc_drop": 1.5}, "max_acc_drop"), ({"iterations": 2.5}, "iterations"),
                         ({"sweep_max": 0.3, "sweep_step": 0.5}, "sweep_step")):
        with pytest.raises(InvalidFieldError, match=f"^anp defense: field {field} = "):
            make_defense("anp", **knobs)
    bb = make_defense("anp", **BACKDOORBENCH).config
    assert (bb.iterations, bb.batch_size, bb.selection, bb.sweep_max, bb.sweep_step, bb.max_acc_drop) == \
        (2000, 256, "sweep", 0.9, 0.05, 0.1)
    assert make_defense("anp").config.iterations is None and make_defense("anp").config.selection == "fixed"


def test_ibau_hypergradient_matches_the_analytic_implicit_gradient():
    # inner: δ*(θ) = argmin ½‖δ − θ‖² = θ (map Φ = δ − η(δ − θ)); outer: ‖δ‖² + θ·1 -> d/dθ = 2θ + 1
    theta = torch.tensor([0.5, -1.5, 2.0], requires_grad=True)
    eta = 0.5

    def fp_map(d):
        inner = 0.5 * (d - theta).pow(2).sum()
        (g,) = torch.autograd.grad(inner, d, create_graph=True)
        return d - eta * g

    (g,) = implicit_hypergradient(theta.detach().clone(), [theta], fp_map,
                                  lambda d: d.pow(2).sum() + theta.sum(), K=60)
    assert torch.allclose(g, 2 * theta.detach() + 1, atol=1e-5)
    (g1,) = implicit_hypergradient(theta.detach().clone(), [theta], fp_map,
                                   lambda d: d.pow(2).sum() + theta.sum(), K=1)
    assert not torch.allclose(g1, g, atol=1e-2)  # K matters: one iteration is only a partial sum


def test_ibau_unlearns_keeps_architecture_and_applies_to_models_without_conv_or_bn():
    clean = _clean()
    net = _trained_net(clean)
    before = copy.deepcopy(net)
    ibau = make_defense("ibau", epochs=2, batch_size=20, lr=1e-3)
    out = ibau.defend(net, clean, progress=False)
    assert type(out) is type(before)
    assert any(not torch.equal(a, b) for a, b in zip(out.state_dict().values(), before.state_dict().values()))
    assert len(ibau.report["perturbation_norms"]) == 2 and all(n > 0 for n in ibau.report["perturbation_norms"])
    acc = lambda m: (m(clean.features).argmax(1) == clean.labels).float().mean().item()  # noqa: E731
    assert acc(out) >= acc(before) - 0.2
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(SHAPE[0] * SHAPE[1], 10))
    w0 = mlp[1].weight.detach().clone()
    make_defense("ibau", epochs=1, batch_size=20, lr=1e-3).defend(mlp, clean, progress=False)
    assert not torch.equal(mlp[1].weight, w0)
    with pytest.raises(ValueError, match="portion"):
        make_defense("ibau", portion=0)


def test_ibau_perturbation_steps_and_radius():
    """More δ steps per round fit a larger universal perturbation; the L2 ball caps it (in
    units of the clean features' standard deviation). ``K=1``: the perturbation is fitted
    before the hypergradient, whose fixed-point iterations this test does not look at."""
    clean = _clean()
    net = _trained_net(clean)
    norms = {}
    for steps in (1, 8):
        ibau = make_defense("ibau", epochs=1, batch_size=40, pert_steps=steps, radius=1e6, K=1)
        ibau.defend(copy.deepcopy(net), clean, progress=False)
        norms[steps] = ibau.report["perturbation_norms"][0]
        assert ibau.report["input_scale"] == pytest.approx(float(clean.features.std()))
    assert norms[8] > norms[1] > 0
    capped = make_defense("ibau", epochs=2, batch_size=40, pert_steps=8, radius=norms[8] / 4, K=1)
    capped.defend(copy.deepcopy(net), clean, progress=False)
    assert capped.report["perturbation_norms"] == pytest.approx([norms[8] / 4] * 2, rel=1e-4)
    with pytest.raises(ValueError, match="pert_steps"):
        make_defense("ibau", pert_steps=0)
    with pytest.raises(ValueError, match="radius"):
        make_defense("ibau", radius=0)
