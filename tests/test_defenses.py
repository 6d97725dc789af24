import copy
import dataclasses
import re

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bdlib.defenses import CleanData, clean_subset_indices, make_defense
from bdlib.defenses.gnft import approx_gradient, exact_gradient
from bdlib.models import build_model
from bdlib.registry import UnknownNameError
from bdlib.synthetic_task import fit, template_task


def tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 4))


def batch(n=32):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 3, 4, generator=g), torch.randint(0, 4, (n,), generator=g)


def _flat(gs):
    return torch.cat([g.reshape(-1) for g in gs])


@pytest.mark.parametrize("norm", ["per_tensor", "global"])
def test_approx_matches_exact_penalty_direction_for_small_r(norm):
    """(1−α)g1 + α g2 − g  ≈  α r ∇penalty: compare the *penalty* parts, not the whole
    update (which is dominated by g and would agree trivially)."""
    net, (x, y) = tiny_net(), batch()
    alpha, r = 0.7, 1e-3
    g = _flat(torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters())))
    _, approx = approx_gradient(net, x, y, r=r, alpha=alpha, norm=norm)
    _, exact = exact_gradient(net, x, y, lam=alpha * r, norm=norm)
    pen_approx, pen_exact = _flat(approx) - g, _flat(exact) - g
    cos = F.cosine_similarity(pen_approx, pen_exact, dim=0).item()
    assert cos > 0.99
    assert pen_approx.norm() / pen_exact.norm() == pytest.approx(1.0, rel=0.05)
    # and the whole update direction agrees too
    assert F.cosine_similarity(_flat(approx), _flat(exact), dim=0).item() > 0.999


def test_approx_agreement_degrades_gracefully_with_r():
    net, (x, y) = tiny_net(), batch()
    g = _flat(torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters())))
    _, exact = exact_gradient(net, x, y, lam=0.7 * 1e-3)
    cos = []
    for r in (1e-3, 0.5):
        _, approx = approx_gradient(net, x, y, r=r, alpha=0.7)
        cos.append(F.cosine_similarity(_flat(approx) - g, (_flat(exact) - g), dim=0).item())
    assert cos[0] > cos[1]


def test_approx_restores_parameters_and_bn_statistics():
    net = build_model("smallcnn", (101, 40), 10).train()
    x, y = torch.randn(8, 1, 101, 40), torch.randint(0, 10, (8,))
    ref = copy.deepcopy(net)
    F.cross_entropy(ref(x), y)  # one clean pass updates BN running stats once
    approx_gradient(net, x, y, r=0.05, alpha=0.7)
    for (k, a), b in zip(net.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def _clean(n=24):
    g = torch.Generator().manual_seed(0)
    return CleanData(torch.randn(n, 1, 101, 40, generator=g), torch.randint(0, 10, (n,), generator=g))


@pytest.mark.parametrize("name,knobs", [("ft", {}), ("gnft", {"mode": "approx"}), ("gnft", {"mode": "exact"})])
def test_defense_returns_same_architecture_and_changes_weights(name, knobs):
    net = build_model("smallcnn", (101, 40), 10)
    before = copy.deepcopy(net.state_dict())
    out = make_defense(name, epochs=2, batch_size=8, **knobs).defend(net, _clean(), progress=False)
    assert type(out) is type(net)
    assert [k for k in out.state_dict()] == list(before)
    assert any(not torch.equal(before[k], v) for k, v in out.state_dict().items())
    assert out(torch.zeros(2, 1, 101, 40)).shape == (2, 10)


@pytest.mark.parametrize("mode", ["approx", "exact"])
def test_gnft_step_lowers_the_gradient_norm_more_than_a_plain_step(mode):
    """The penalty's own effect (Eq. 3): from the same point, a GN-FT step (α > 0) ends
    at a smaller ‖∇L‖ than the plain step (α = 0) of the same size."""
    x, y = batch(64)

    def grad_norm_after(alpha):
        net = tiny_net()
        make_defense("gnft", mode=mode, epochs=1, batch_size=64, r=0.05, alpha=alpha, lr=0.5,
                     momentum=0.0).defend(net, CleanData(x, y), progress=False)
        return _flat(torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters()))).norm().item()

    assert grad_norm_after(0.9) < grad_norm_after(0.0)


def test_bad_defense_input_is_explained():
    with pytest.raises(ValueError, match="zero clean samples"):
        CleanData(torch.zeros(0, 1, 101, 40), torch.zeros(0))
    with pytest.raises(ValueError, match="zero clean samples"):
        clean_subset_indices(10, 0.01, seed=0)
    with pytest.raises(UnknownNameError, match="'lamda'.*valid options: .*mode, r, alpha"):
        make_defense("gnft", lamda=0.1)
    with pytest.raises(ValueError, match="valid: approx, exact"):
        make_defense("gnft", mode="hessian")
    with pytest.raises(UnknownNameError,
                       match="valid defenses: anp, clp, fp, ft, ftsam, gnft, gnft_prune, ibau, nad, tsbd"):
        make_defense("fine-pruning")


def test_clean_subset_is_exact_and_seeded():
    a = clean_subset_indices(1000, 0.05, seed=3)
    assert len(a) == 50 and len(set(a)) == 50
    np.testing.assert_array_equal(a, clean_subset_indices(1000, 0.05, seed=3))
    assert not np.array_equal(a, clean_subset_indices(1000, 0.05, seed=4))


#: defenses that work on named parts of a model (BatchNorm, conv layers, attention maps: the
#: DefendableModel contract); the others need only its parameters and must defend any model
NEEDS_PARTS = {"anp", "clp", "fp", "gnft_prune", "nad", "tsbd"}


@pytest.mark.parametrize("name", sorted(__import__("bdlib.defenses", fromlist=["DEFENSES"]).DEFENSES))
def test_every_defense_works_on_a_model_without_conv_or_bn_or_says_why(name):
    """Recurrent/attention models have no Conv2d or BatchNorm: a defense that needs only the
    parameters must change such a model's weights; one that needs named parts refuses it with a
    message naming the model — never a silent no-op."""
    from bdlib.models.contract import DefenseNotApplicable

    x, y = batch(16)
    net = tiny_net()
    before = copy.deepcopy(net.state_dict())
    knobs = {} if name == "clp" else {"epochs": 1, "batch_size": 8}
    defense = make_defense(name, **knobs)
    if name in NEEDS_PARTS:
        with pytest.raises(DefenseNotApplicable, match="cannot defend Sequential"):
            defense.defend(net, CleanData(x, y), progress=False)
        return
    out = defense.defend(net, CleanData(x, y), progress=False)
    assert any(not torch.equal(a, before[k]) for k, a in out.state_dict().items())


def _separable(n, seed):
    """Four classes on a small (24, 16) map (bdlib.synthetic_task): SmallCNN learns them in a few
    steps, so a defense that breaks clean classification shows at once."""
    return template_task(n, (24, 16), 4, seed)


@pytest.fixture(scope="module")
def trained_smallcnn():
    return fit(build_model("smallcnn", (24, 16), 4, seed=0), _separable(96, seed=1), steps=40)


@pytest.mark.parametrize("name", sorted(__import__("bdlib.defenses", fromlist=["DEFENSES"]).DEFENSES))
def test_every_defense_keeps_a_clean_model_classifying_clean_data(name, trained_smallcnn):
    """Issue 4: each defense returns a model of the same architecture that still classifies
    clean data. On a model with no backdoor, what a defense removes must not be the task."""
    test = _separable(64, seed=2)
    acc = lambda m: (m.eval()(test.features).argmax(1) == test.labels).float().mean().item()  # noqa: E731
    assert acc(trained_smallcnn) >= 0.95
    knobs = {} if name == "clp" else {"epochs": 2, "batch_size": 16}
    out = make_defense(name, seed=0, **knobs).defend(copy.deepcopy(trained_smallcnn), _separable(48, seed=3),
                                                      progress=False)
    assert type(out) is type(trained_smallcnn)
    assert list(out.state_dict()) == list(trained_smallcnn.state_dict())
    assert acc(out) >= 0.8, f"{name}: clean accuracy {acc(out):.2f} (chance 0.25)"


@pytest.mark.parametrize("name", sorted(__import__("bdlib.defenses", fromlist=["DEFENSES"]).DEFENSES))
def test_every_defense_rejects_an_unknown_knob_naming_the_valid_ones(name):
    from bdlib.defenses import DEFENSES

    valid = ", ".join(f.name for f in dataclasses.fields(DEFENSES.get(name).Config))
    with pytest.raises(UnknownNameError, match=rf"unknown {name} defense option\(s\) 'no_such_knob'; "
                                               rf"valid options: {re.escape(valid)}$"):
        make_defense(name, no_such_knob=1)


@pytest.mark.parametrize("fraction,message", [(0.0, "must be in"), (0.001, "zero clean samples"), (1.5, "must be in")])
def test_experiment_rejects_a_bad_clean_budget_before_any_training(fraction, message, monkeypatch, tmp_path):
    """A clean budget of zero clips must fail at once, not after a victim has been trained."""
    import pandas as pd

    from bdlib.pipeline import load_experiment

    exp = load_experiment("smoke")
    exp.root = tmp_path
    exp.__dict__["manifest"] = pd.DataFrame({"split": ["train"] * 320 + ["test"] * 160})

    def no_training(*a, **k):
        raise AssertionError("a victim was loaded or trained before the clean budget was checked")

    monkeypatch.setattr(type(exp), "backdoored_model", no_training)
    with pytest.raises(ValueError, match=message):
        exp.defend("ft", "badnets", clean_fraction=fraction)


def test_epochs_none_means_the_profiles_budget(monkeypatch):
    """Notebooks pass ``epochs=None`` by default: the profile's defense budget applies, and a
    data-free defense (CLP) is not handed an epoch knob it does not have."""
    from bdlib import pipeline

    seen = []

    def capture(name, seed=0, **knobs):
        seen.append(knobs)
        raise RuntimeError("captured")

    monkeypatch.setattr(pipeline, "make_defense", capture)
    exp = pipeline.load_experiment("smoke")
    for name, knobs in [("ft", {"epochs": None, "lr": 0.5}), ("ft", {"epochs": 3}), ("clp", {"epochs": None})]:
        with pytest.raises(RuntimeError, match="captured"):
            exp.defend(name, "badnets", **knobs)
    budget = {"epochs": exp.profile.defense_epochs, "batch_size": exp.profile.defense_batch_size}
    assert seen == [{**budget, "lr": 0.5}, {**budget, "epochs": 3}, {}]
