"""Fine-Pruning, FT-SAM and CLP: the model-level baselines the GN-FT paper compares."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bdlib.defenses import CleanData, make_defense
from bdlib.defenses.clp import channel_lipschitz, conv_bn_pairs
from bdlib.defenses.fp import mean_activation
from bdlib.defenses.gnft import approx_gradient
from bdlib.defenses.ibau import implicit_hypergradient
from bdlib.models import build_model


def _clean(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return CleanData(torch.randn(n, 1, 101, 40, generator=g) * 20, torch.randint(0, 10, (n,), generator=g))


def _trained_net(clean):
    net = build_model("smallcnn", (101, 40), 10)
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


def test_ftsam_defends_and_keeps_architecture():
    clean = _clean()
    net = _trained_net(clean)
    out = make_defense("ftsam", epochs=2, batch_size=20).defend(copy.deepcopy(net), clean, progress=False)
    assert list(out.state_dict()) == list(net.state_dict())
    assert out(clean.features[:2]).shape == (2, 10)


def test_clp_prunes_the_outlier_channel_without_data():
    net = build_model("smallcnn", (101, 40), 10).eval()
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
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(101 * 40, 10))
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
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(101 * 40, 10))
    with pytest.raises(ValueError, match="ANP cannot defend Sequential: .*norm_layers"):
        make_defense("anp", epochs=1).defend(mlp, _clean(8), progress=False)


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
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(101 * 40, 10))
    w0 = mlp[1].weight.detach().clone()
    make_defense("ibau", epochs=1, batch_size=20, lr=1e-3).defend(mlp, clean, progress=False)
    assert not torch.equal(mlp[1].weight, w0)
    with pytest.raises(ValueError, match="portion"):
        make_defense("ibau", portion=0)


def test_ibau_perturbation_steps_and_radius():
    """More δ steps per round fit a larger universal perturbation; the L2 ball caps it (in
    units of the clean features' standard deviation)."""
    clean = _clean()
    net = _trained_net(clean)
    norms = {}
    for steps in (1, 8):
        ibau = make_defense("ibau", epochs=1, batch_size=40, pert_steps=steps, radius=1e6)
        ibau.defend(copy.deepcopy(net), clean, progress=False)
        norms[steps] = ibau.report["perturbation_norms"][0]
        assert ibau.report["input_scale"] == pytest.approx(float(clean.features.std()))
    assert norms[8] > norms[1] > 0
    capped = make_defense("ibau", epochs=2, batch_size=40, pert_steps=8, radius=norms[8] / 4)
    capped.defend(copy.deepcopy(net), clean, progress=False)
    assert capped.report["perturbation_norms"] == pytest.approx([norms[8] / 4] * 2, rel=1e-4)
    with pytest.raises(ValueError, match="pert_steps"):
        make_defense("ibau", pert_steps=0)
    with pytest.raises(ValueError, match="radius"):
        make_defense("ibau", radius=0)
