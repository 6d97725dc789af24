"""The GN-FT authors' six models and the declared model contract (issue 13).

Every registered defense meets every registered model: it either runs and leaves a clean
model classifying, or refuses at once with ``DefenseNotApplicable`` naming the model and
the part it lacks — and it refuses exactly when the model declares that part absent. The
refusal is declared: ``Defense.check`` gives it without data and without changing the model,
and ``defend`` calls ``check`` before anything else.
"""
import copy
import re
import sys

import pytest
import torch
import torch.nn as nn

from bdlib.defenses import DEFENSES, make_defense
from bdlib.models import MODELS, build_model, contract
from bdlib.models.contract import DefenseNotApplicable, InvalidModelContract
from bdlib.synthetic_task import fit, template_task

SHAPE, CLASSES = (26, 13), 3  # about the smallest map every model takes (ResNet: 25×13)
# the two wide models get narrow copies for training here; the contract does not depend on width
NARROW = {"largecnn": {"CHANNELS": (8, 16, 16, 16, 16)}, "rnn": {"HIDDEN": 32}}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These maps are tiny: with two threads, synchronisation costs more than the work (an
    LSTMAtt training step took 0.1-2.4 s on two busy cores, 0.06 s on one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _documented_parameter_count(cls) -> int:
    found = re.search(r"Parameters\s+at\s+101×40,\s+10\s+classes:\s+([\d,]+)", sys.modules[cls.__module__].__doc__)
    assert found, f"{cls.__name__}'s module docstring states no parameter count"
    return int(found.group(1).replace(",", ""))


@pytest.mark.parametrize("name", list(MODELS))
def test_model_at_paper_input_gives_logits_and_has_its_documented_size(name):
    net = build_model(name, (101, 40), 10, seed=0).eval()
    out = net(torch.randn(3, 1, 101, 40, generator=torch.Generator().manual_seed(0)))
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    assert sum(p.numel() for p in net.parameters()) == _documented_parameter_count(type(net))


@pytest.mark.parametrize("name", list(MODELS))
def test_model_declares_every_part_with_its_type(name):
    net = build_model(name, (101, 40), 10, seed=0).eval()
    assert isinstance(net, contract.DefendableModel)
    contract.check_contract(net)
    cls = contract.optional_layer(net, "classifier")
    assert cls is not None and cls[1].out_features == 10
    # the classifier really is the last layer: its output is the model's output
    seen = {}
    hooks = [net.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o))
             for n in (net.classifier, *net.attention_layers)]
    x = torch.randn(2, 1, 101, 40)
    try:
        y = net(x)
    finally:
        for h in hooks:
            h.remove()
    torch.testing.assert_close(seen[net.classifier], y)
    assert all(seen[n].dim() == 4 for n in net.attention_layers), "NAD needs (N, C, H, W) maps"
    if net.last_conv_norm:
        assert net.get_submodule(net.last_conv_norm).num_features == net.get_submodule(net.last_conv).out_channels
    # every BatchNorm the model has is one ANP masks (none is left out)
    bns = {n for n, m in net.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    assert set(net.norm_layers) == bns


def test_contract_refusals_name_defense_model_and_part():
    rnn = build_model("rnn", (26, 13), 3)
    with pytest.raises(DefenseNotApplicable, match=r"^ANP cannot defend StackedLSTM: it has no norm_layers \(BatchNorm"):
        contract.layers(rnn, "norm_layers", "ANP", "ANP masks BatchNorm channels")
    with pytest.raises(DefenseNotApplicable, match=r"^CLP cannot defend StackedLSTM: it has no conv_norm_pairs"):
        contract.conv_norm_pairs(rnn, "CLP", "why")
    undeclared = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(DefenseNotApplicable, match="cannot defend Sequential: it does not declare its parts"):
        contract.layer(undeclared, "classifier", "Fine-Pruning", "why")
    broken = build_model("smallcnn", (26, 13), 3)
    broken.classifier = "bn3"  # declared, but not a Linear
    with pytest.raises(InvalidModelContract, match="classifier='bn3', a BatchNorm2d; expected Linear"):
        contract.check_contract(broken)


# (registry name, knobs): tiny budgets, one step per epoch; Fine-Pruning also with its conv option, GN-FT also exact
CASES = [(d, {}) for d in DEFENSES] + [("fp", {"layer": "last_conv"}), ("gnft", {"mode": "exact"})]
KNOBS = {"clp": {}, "fp": {"epochs": 1, "prune_step": 0.2}, "nad": {"epochs": 1, "teacher_epochs": 1},
         "anp": {"epochs": 1}, "tsbd": {"epochs": 3, "unlearn_max_epochs": 2},
         "ibau": {"epochs": 1, "K": 2, "pert_steps": 1}}


def _needed_part(defense: str, knobs: dict) -> str | None:
    """The declared part a defense works on (None: any differentiable model)."""
    if defense == "fp":
        return knobs.get("layer", "classifier")
    return {"nad": "attention_layers", "anp": "norm_layers", "clp": "conv_norm_pairs",
            "gnft_prune": "last_conv"}.get(defense)


def _lacks(net: nn.Module, defense: str, part: str | None) -> bool:
    """Whether ``net`` lacks what ``defense`` works on: its declared part, or (TSBD) any Conv2d."""
    return (part is not None and not getattr(net, part)) or (
        defense == "tsbd" and not any(isinstance(m, nn.Conv2d) for m in net.modules()))


def _check_refusal(defense, net: nn.Module) -> str | None:
    """``defense.check(net)``'s refusal message, or None; fails if the check changed ``net``
    (its parameters and buffers, their ``requires_grad``, the train/eval mode) or drew from the
    global RNG."""
    before = copy.deepcopy(net.state_dict())
    grads, modes = [p.requires_grad for p in net.parameters()], [m.training for m in net.modules()]
    rng = torch.get_rng_state()
    try:
        defense.check(net)
        message = None
    except DefenseNotApplicable as err:
        message = str(err)
    after = net.state_dict()
    assert list(after) == list(before) and all(torch.equal(a, before[k]) for k, a in after.items()), "check changed it"
    assert [p.requires_grad for p in net.parameters()] == grads and [m.training for m in net.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng), "check drew from the global RNG"
    return message


def _data():
    return (template_task(24, SHAPE, CLASSES, seed=1), template_task(30, SHAPE, CLASSES, seed=2),
            template_task(18, SHAPE, CLASSES, seed=3))


def _accuracy(net, data):
    with torch.no_grad():
        return (net.eval()(data.features).argmax(1) == data.labels).float().mean().item()


_trained: dict = {}


def _trained_model(name):
    """A narrow-enough copy of model ``name`` fitted to the easy task (cached per model)."""
    if name not in _trained:
        cls = MODELS.get(name)
        cls = type(cls.__name__, (cls,), NARROW.get(name, {}))
        torch.manual_seed(0)
        net = fit(cls(input_shape=SHAPE, num_classes=CLASSES), _data()[0], steps=30, lr=3e-3)
        _trained[name] = net
    return _trained[name]


# found by this test: at lr 0.01, a step along the gradient taken at a perturbed point (FT-SAM, rho 2 adaptive or
# 0.05 plain; TSBD's recovery, GN-FT's approx r 0.05) drives the BN-free LargeCNN, whose logits reach ~30 here,
# to a constant prediction; plain FT at lr 0.01, GN-FT at its lr 1e-3 and TSBD at lr 1e-3 keep 100 %
WHY = "a perturbed-gradient step at lr 0.01 collapses the BN-free LargeCNN"
KNOWN = {("ftsam", "largecnn"): WHY, ("tsbd", "largecnn"): WHY}


def _cases():
    for model in MODELS:
        for defense, extra in CASES:
            yield pytest.param(model, defense, extra, id="-".join([model, defense, *map(str, extra.values())]))


@pytest.mark.parametrize("model,defense,extra", list(_cases()))
def test_every_defense_on_every_model_runs_or_refuses_naming_the_missing_part(model, defense, extra):
    net = _trained_model(model)
    _, test, clean = _data()
    assert _accuracy(net, test) >= 0.9, f"{model} did not learn the easy task"
    knobs = {**({} if defense == "clp" else {"batch_size": len(clean)}), **KNOBS.get(defense, {"epochs": 1}), **extra}
    if defense == "nad":
        knobs["betas"] = (1000.0,) * max(1, len(net.attention_layers))  # one beta per declared map
    part = _needed_part(defense, knobs)
    lacks = _lacks(net, defense, part)
    before = copy.deepcopy(net.state_dict())
    candidate = copy.deepcopy(net)
    declared = _check_refusal(make_defense(defense, seed=0, **knobs), candidate)  # what a study is told up front
    try:
        out = make_defense(defense, seed=0, **knobs).defend(candidate, clean, progress=False)
    except DefenseNotApplicable as err:
        assert lacks, f"{defense} refused {model}, which declares its {part}: {err}"
        assert f"cannot defend {type(net).__name__}" in str(err) and (part or "Conv2d") in str(err)
        assert all(torch.equal(a, before[k]) for k, a in candidate.state_dict().items()), "refused after changing it"
        assert declared == str(err), f"check said {declared!r}, defend refused with {str(err)!r}"
        return
    assert not lacks, f"{defense} ran on {model}, which declares no {part}"
    assert declared is None, f"check refused {model} ({declared}), defend ran on it"
    assert list(out.state_dict()) == list(before)
    logits = out.eval()(clean.features)
    assert logits.shape == (len(clean), CLASSES) and torch.isfinite(logits).all()
    # a collapsed model predicts one class (1/3); these budgets leave little room to recover from pruning
    acc = _accuracy(out, test)
    if (defense, model) in KNOWN and not extra:  # every check above still holds; only the accuracy is known to fail
        assert acc < 0.6, f"{defense} on {model} no longer collapses ({acc:.2f}): remove it from KNOWN"
        return
    assert acc >= 0.6, f"{defense} on {model}: clean accuracy {acc:.2f} (chance 0.33)"


def test_nad_refuses_a_beta_count_that_does_not_match_the_declared_maps():
    net = build_model("lstmatt", SHAPE, CLASSES)  # two conv stages: the default three betas do not fit
    message = (r"NAD cannot defend LSTMAtt with these knobs: it got 3 betas "
               r"for 2 attention layers \('batchnorm1', 'batchnorm2'\)")
    with pytest.raises(DefenseNotApplicable, match=message):
        make_defense("nad").check(net)  # the knobs decide: two betas fit
    make_defense("nad", betas=(1.0, 1.0)).check(net)
    with pytest.raises(DefenseNotApplicable, match=message):
        make_defense("nad").defend(net, _data()[2], progress=False)


@pytest.fixture(scope="module")
def _fresh_models():
    """One untrained model of each registered architecture at its real width (what
    ``bdlib.study.refusal`` checks): building one is cheap, nothing here trains."""
    return {name: build_model(name, SHAPE, CLASSES, seed=0) for name in MODELS}


@pytest.mark.parametrize("defense,extra", CASES, ids=["-".join([d, *map(str, e.values())]) for d, e in CASES])
def test_check_refuses_exactly_the_models_that_lack_the_part_without_changing_them(_fresh_models, defense, extra):
    for model, net in _fresh_models.items():
        part = _needed_part(defense, extra)
        knobs = {"betas": (1000.0,) * max(1, len(net.attention_layers))} if defense == "nad" else {}
        message = _check_refusal(make_defense(defense, seed=0, **knobs, **extra), net)
        if not _lacks(net, defense, part):
            assert message is None, f"{defense} refused {model}, which declares its {part}: {message}"
            continue
        assert message is not None, f"{defense} accepted {model}, which declares no {part}"
        assert f"cannot defend {type(net).__name__}" in message and (part or "Conv2d") in message


def test_check_refuses_a_model_that_does_not_declare_its_parts():
    undeclared = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 24 * 11, CLASSES))
    for defense, extra in CASES:
        needs = _needed_part(defense, extra)
        if needs is None:  # a fine-tuning defense (or TSBD, which takes Conv2d by type) needs no declaration
            assert _check_refusal(make_defense(defense, **extra), undeclared) is None, defense
            continue
        with pytest.raises(DefenseNotApplicable, match="cannot defend Sequential: it does not declare its parts"):
            make_defense(defense, **extra).check(undeclared)


class _Checked(Exception):
    """Raised by a defense's check in the test below: defend got no further."""


@pytest.mark.parametrize("defense", list(DEFENSES))
def test_defend_calls_check_before_anything_else(defense):
    """A subclass whose check refuses is refused by its own defend before the clean data (None
    here) or the model is touched — so check and defend can never disagree about a refusal."""
    cls = DEFENSES.get(defense)

    def check(self, model):
        raise _Checked(type(self).__name__)

    refusing = type(f"Refusing{cls.__name__}", (cls,), {"check": check})
    net = build_model("smallcnn", SHAPE, CLASSES, seed=0)
    before = copy.deepcopy(net.state_dict())
    modes = [m.training for m in net.modules()]
    with pytest.raises(_Checked):
        refusing(cls.Config(), seed=0).defend(net, None, progress=False)
    assert all(torch.equal(a, before[k]) for k, a in net.state_dict().items())
    assert [m.training for m in net.modules()] == modes


def test_too_small_an_input_is_named():
    with pytest.raises(ValueError, match=r"ResNet cannot take \(20, 12\) maps"):
        build_model("resnet", (20, 12), 3)
