"""GN-FT's observation (paper Sec. 3.1): per-unit activation classes and gradient norms.

The paper reports that, on clean data, *backdoored* neurons have larger gradients than the
other neurons and *clean* neurons the smallest — the reason a gradient-norm penalty
(Eq. 3) should weaken the backdoor. This module measures both sides of that claim for
any model so a notebook can test it:

* which units are backdoor / hybrid / clean / dormant, from their mean activation on
  clean clips and on the same clips with the trigger (:func:`unit_activations`,
  :func:`classify_units`);
* each unit's gradient norm ‖∂L_clean/∂θ_unit‖ on the defender's clean data
  (:func:`unit_gradient_norms`);
* a tidy table over stages (victim, after FT, after GN-FT) and the check whether
  backdoor > hybrid > clean holds (:func:`observation_table`, :func:`ordering_check`).

The activation rule that assigns classes is ours: neither the paper text we could read
(abstract and summaries of Sec. 3) nor the authors' code (quantum-bitss/Audio-Backdoor-Attack)
states one (:func:`classify_units`). The authors' ``ft_reg.py`` scores single neurons by the
loss change when one is pruned, on clean and on backdoor data (``get_loss_change``); that
criterion is here too, as a second labelling to check the first against
(:func:`unit_loss_changes`, :func:`classify_by_loss_change`).

A *unit* is one output channel of a convolution or one output of a linear layer; its
parameters are that row of ``weight`` and that entry of ``bias`` (the incoming weights).
"""
from __future__ import annotations

import copy
import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from .device import model_device
from .registry import check_choice

#: SmallCNN's units: the three conv blocks and the hidden linear layer (bdlib/models/smallcnn.py);
#: each is followed by a ReLU in its forward, which :func:`unit_activations` applies.
SMALLCNN_LAYERS: tuple[str, ...] = ("conv1", "conv2", "conv3", "fc1")

#: the four classes, in the order the paper ranks gradients (dormant last: not ranked)
CLASSES: tuple[str, ...] = ("backdoor", "hybrid", "clean", "dormant")
#: the ordering Sec. 3.1 claims, largest gradient first
ORDER: tuple[str, ...] = ("backdoor", "hybrid", "clean")
MODES = ("train", "eval")
UNIT_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def unit_layers(model: nn.Module) -> tuple[str, ...]:
    """The layers whose units can be observed in any registered model: every convolution and
    linear layer, in module order, except the classifier the model declares
    (:class:`bdlib.models.contract.DefendableModel`; its outputs are logits, not units). For
    SmallCNN this is :data:`SMALLCNN_LAYERS`. :func:`unit_activations` takes a unit's activation
    after a ReLU, as SmallCNN and the CNNs apply one; for a layer that feeds something else (an
    LSTM model's projections) the activation classes are only indicative."""
    head = model.classifier  # declared by every model (the contract)
    return tuple(name for name, m in model.named_modules() if isinstance(m, UNIT_MODULES) and name != head)


def unit_module(model: nn.Module, name: str) -> nn.Module:
    """The module ``name`` of ``model``, checked to be a layer with units (conv or linear)."""
    modules = dict(model.named_modules())
    if name not in modules:
        valid = [n for n, m in modules.items() if isinstance(m, UNIT_MODULES)]
        raise ValueError(f"model has no layer {name!r}; conv/linear layers: {', '.join(valid)}")
    module = modules[name]
    if not isinstance(module, UNIT_MODULES):
        raise ValueError(f"layer {name!r} is a {type(module).__name__}, not a conv or linear layer "
                         f"(a unit is one output channel of one of {[t.__name__ for t in UNIT_MODULES]})")
    return module


def _chunks(n: int, batch_size: int) -> list[torch.Tensor]:
    """Index chunks covering ``range(n)`` in order, nearly equal in size: no small remainder
    batch, whose BatchNorm statistics (train mode) would be noisy."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if n == 0:
        raise ValueError("no inputs: an observation needs at least one clip")
    return list(torch.arange(n).tensor_split(math.ceil(n / batch_size)))


def unit_activations(model: nn.Module, layers: Sequence[str], x: torch.Tensor,
                     batch_size: int = 256) -> dict[str, np.ndarray]:
    """Per layer, each unit's mean post-ReLU activation over the inputs ``x``.

    A forward hook on each conv/linear module takes its output and applies the ReLU that
    follows it in SmallCNN (conv → ReLU → BN, fc1 → ReLU): the activation is measured
    *after* ReLU and *before* BatchNorm, i.e. what the unit emits. Conv units are averaged
    over space, then over clips. The model runs in eval mode (running BN statistics, no
    dropout), as at inference; its mode is restored afterwards.
    """
    modules = {name: unit_module(model, name) for name in layers}
    sums = {name: None for name in layers}

    def hook(name):
        def record(_module, _inputs, out):
            a = F.relu(out.detach()).float()
            per_clip = a.flatten(2).mean(2) if a.dim() > 2 else a  # (N, units)
            s = per_clip.sum(0).cpu()
            sums[name] = s if sums[name] is None else sums[name] + s
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in modules.items()]
    was_training = model.training
    try:
        model.eval()
        dev = model_device(model)  # inputs follow the model (CPU or GPU); the hooks bring results back
        with torch.no_grad():
            for idx in _chunks(len(x), batch_size):
                model(x[idx].to(dev))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {name: (sums[name] / len(x)).numpy().astype(np.float64) for name in layers}


def classify_units(act_clean: np.ndarray, act_triggered: np.ndarray, *, backdoor_ratio: float = 2.0,
                   clean_ratio: float = 1.25, dormant_fraction: float = 0.1, eps: float = 1e-12) -> np.ndarray:
    """Label each unit of one layer backdoor / hybrid / clean / dormant (no rule is given in
    the paper or the authors' code; this one is ours, deterministic).

    ``act_clean`` and ``act_triggered`` are the units' mean activations on the same clips
    without and with the trigger (:func:`unit_activations`). With peak = max(clean,
    triggered) and ratio = triggered / clean:

    * **dormant** — peak ≤ ``dormant_fraction`` × the layer's median peak (or ≤ ``eps``):
      the unit barely fires on either input. The median, not the maximum, sets the scale so
      that a few very strong backdoor units do not make the rest look dormant; an all-zero
      layer is all dormant.
    * **backdoor** — ratio ≥ ``backdoor_ratio`` (default 2): the trigger at least doubles
      the activation (a unit silent on clean clips but firing on triggered ones has
      ratio ∞).
    * **clean** — ratio ≤ ``clean_ratio`` (default 1.25): active on clean clips and not
      raised (or even lowered) by the trigger.
    * **hybrid** — in between: active on clean clips and raised by the trigger.

    The ratio thresholds are relative, so the rule reads the same in every layer whatever
    its scale.
    """
    c = np.asarray(act_clean, dtype=np.float64)
    t = np.asarray(act_triggered, dtype=np.float64)
    if c.shape != t.shape or c.ndim != 1:
        raise ValueError(f"act_clean and act_triggered must be 1-D and of one shape, got {c.shape} and {t.shape}")
    if not 1.0 <= clean_ratio < backdoor_ratio:
        raise ValueError(f"need 1 <= clean_ratio < backdoor_ratio, got clean_ratio={clean_ratio}, "
                         f"backdoor_ratio={backdoor_ratio}")
    if not 0.0 <= dormant_fraction < 1.0:
        raise ValueError(f"dormant_fraction must be in [0, 1), got {dormant_fraction}")
    if np.any(c < 0) or np.any(t < 0) or not (np.all(np.isfinite(c)) and np.all(np.isfinite(t))):
        raise ValueError("activations must be finite and >= 0 (post-ReLU means)")
    labels = np.full(c.shape, "hybrid", dtype=object)
    if c.size == 0:
        return labels
    peak = np.maximum(c, t)
    dormant = peak <= max(dormant_fraction * float(np.median(peak)), eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(c > eps, t / np.maximum(c, eps), np.inf)
    labels[ratio >= backdoor_ratio] = "backdoor"
    labels[ratio <= clean_ratio] = "clean"
    labels[dormant] = "dormant"
    return labels


def unit_gradient_norms(model: nn.Module, layers: Sequence[str], x: torch.Tensor, y: torch.Tensor,
                        batch_size: int = 256, mode: str = "train", seed: int = 0) -> dict[str, np.ndarray]:
    """Per layer, each unit's ‖∂L/∂θ_unit‖₂, L = mean cross-entropy over all of (x, y).

    θ_unit is the unit's incoming weights and its bias (one row of ``weight``, one entry of
    ``bias``). The gradient is that of the mean loss over the whole clean set, summed over
    batches taken in order, so it does not depend on a shuffle.

    ``mode="train"`` (default) takes it as GN-FT's fine-tuning sees it: the authors'
    ``ft_reg.py`` (``train_finetuning_reg``) calls ``model.train()``, so BatchNorm uses batch
    statistics and dropout is on (its masks drawn from ``seed``, so the result is
    reproducible). ``mode="eval"`` takes the gradient of the deployed model's loss (running
    statistics, no dropout). The model is not changed: the gradient is taken on a copy,
    so BatchNorm's running statistics are left as they were.
    """
    check_choice(mode, MODES, "gradient mode")
    y = torch.as_tensor(y, dtype=torch.long)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} inputs but {len(y)} labels")
    net = copy.deepcopy(model)
    modules = {name: unit_module(net, name) for name in layers}
    net.train(mode == "train")
    net.zero_grad(set_to_none=True)
    n = len(x)
    dev = model_device(net)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        with torch.enable_grad():
            for idx in _chunks(n, batch_size):
                loss = F.cross_entropy(net(x[idx].to(dev)), y[idx].to(dev), reduction="sum") / n
                loss.backward()
    out = {}
    for name, m in modules.items():
        units = m.weight.shape[0]
        sq = m.weight.grad.reshape(units, -1).pow(2).sum(1)
        if m.bias is not None:
            sq = sq + m.bias.grad.pow(2)
        out[name] = sq.sqrt().detach().cpu().numpy().astype(np.float64)
    return out


def unit_loss_changes(model: nn.Module, layers: Sequence[str], x: torch.Tensor, y, batch_size: int = 256
                      ) -> dict[str, np.ndarray]:
    """Per layer, each unit's loss change L(θ with the unit's weights zeroed) − L(θ), L =
    mean cross-entropy on (x, y), eval mode.

    The authors' criterion for single neurons (``ft_reg.py``: ``prune_one_neuron`` zeroes a
    row of a ``.weight`` tensor, ``get_loss_change`` measures the loss change on clean data
    (CLC) and on backdoor data (BLC)): as there, only the weight row is zeroed and the bias
    kept, so the unit's output becomes its bias; and as there, one forward pass over the clips
    per zeroed unit, batched exactly as the unpruned pass.

    Why not a faster form: until stop 37 the layer's output was expanded into one copy per unit
    in a single pass. The copies were batched otherwise than the unpruned pass, so a unit whose
    zeroing changes nothing got float32 rounding (≈ 1e-8) instead of 0, and a backdoored
    model's loss on triggered clips is itself that small, so BLC's sign — which decides the
    class — was partly rounding; it also needed the rest of the network to carry the copies
    (not through a residual sum or an attention over an un-expanded sequence). Here an
    unchanged output gives exactly 0 (dormant), for any architecture; the cost is units ×
    passes (≈ 10 s for a SmallCNN victim's last three layers on 128 clips).
    """
    y = torch.as_tensor(y, dtype=torch.long)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} inputs but {len(y)} labels")
    modules = {name: unit_module(model, name) for name in layers}
    was_training = model.training
    model.eval()
    dev = model_device(model)
    x, y = x.to(dev), y.to(dev)

    def mean_loss() -> float:
        return sum(F.cross_entropy(model(x[i]), y[i], reduction="sum").item()
                   for i in _chunks(len(x), batch_size)) / len(x)

    try:
        with torch.no_grad():
            base = mean_loss()
            return {name: _zeroed_losses(m, mean_loss) - base for name, m in modules.items()}
    finally:
        model.train(was_training)


@torch.no_grad()
def _zeroed_losses(m: nn.Module, mean_loss) -> np.ndarray:
    """``mean_loss()`` with each weight row of ``m`` zeroed in turn (restored after each)."""
    losses = np.zeros(m.weight.shape[0])
    for k in range(len(losses)):
        row = m.weight[k].clone()
        try:
            m.weight[k] = 0.0
            losses[k] = mean_loss()
        finally:
            m.weight[k] = row
    return losses


def classify_by_loss_change(clean_change: np.ndarray, backdoor_change: np.ndarray, *,
                            threshold: float = 0.0) -> np.ndarray:
    """Label units by what pruning each one costs (the quadrants of the authors' CLC/BLC
    scatter, ``ft_reg.py``, axes drawn at 0 and ``t_clc = t_blc = 0``): with CLC the clean-loss
    change and BLC the change of the loss towards the target on triggered clips,

    * **backdoor** — BLC > ``threshold`` ≥ CLC: only the backdoor needs it;
    * **hybrid** — both > ``threshold``;
    * **clean** — CLC > ``threshold`` ≥ BLC: only the clean task needs it;
    * **dormant** — neither: pruning it costs nothing.
    """
    c = np.asarray(clean_change, dtype=np.float64)
    b = np.asarray(backdoor_change, dtype=np.float64)
    if c.shape != b.shape or c.ndim != 1:
        raise ValueError(f"clean_change and backdoor_change must be 1-D and of one shape, got {c.shape} and {b.shape}")
    clean_needs, backdoor_needs = c > threshold, b > threshold
    labels = np.full(c.shape, "dormant", dtype=object)
    labels[backdoor_needs & ~clean_needs] = "backdoor"
    labels[backdoor_needs & clean_needs] = "hybrid"
    labels[clean_needs & ~backdoor_needs] = "clean"
    return labels


def observation_table(attack: str, models: Mapping[str, nn.Module], layers: Sequence[str], clean_x: torch.Tensor,
                      triggered_x: torch.Tensor, defender_x: torch.Tensor, defender_y, *, reference: str = "victim",
                      batch_size: int = 256, mode: str = "train", seed: int = 0, rule: dict | None = None,
                      more_classes: Mapping[str, Mapping[str, np.ndarray]] | None = None) -> pd.DataFrame:
    """One row per (stage, layer, unit) of one attack's models.

    ``models`` maps a stage name ("victim", "after FT", "after GN-FT") to its model, all of
    one architecture. ``clean_x`` / ``triggered_x``: the same test clips without and with
    the trigger (activations); ``defender_x`` / ``defender_y``: the defender's clean subset
    (gradients, as GN-FT takes them). ``rule``: keyword arguments of :func:`classify_units`.

    ``class`` is the unit's class *in the reference model* (the victim): fine-tuning keeps
    each unit's identity, so the table follows the victim's backdoor units through FT and
    GN-FT. ``class_at_stage`` re-applies the rule to that stage's own activations.
    ``more_classes``: other labellings of the reference model's units, column name ->
    {layer: labels} (e.g. :func:`classify_by_loss_change`), one column each; a layer it
    leaves out is missing (NaN) in that column.
    """
    if reference not in models:
        raise ValueError(f"reference stage {reference!r} is not among the models' stages: {', '.join(models)}")
    if len(clean_x) != len(triggered_x):
        raise ValueError(f"clean_x and triggered_x must hold the same clips: {len(clean_x)} vs {len(triggered_x)}")
    rule = dict(rule or {})
    per_stage = {}
    for stage, net in models.items():
        act_c = unit_activations(net, layers, clean_x, batch_size)
        act_t = unit_activations(net, layers, triggered_x, batch_size)
        grads = unit_gradient_norms(net, layers, defender_x, defender_y, batch_size, mode, seed)
        per_stage[stage] = (act_c, act_t, grads)
    ref_c, ref_t, _ = per_stage[reference]
    ref_class = {name: classify_units(ref_c[name], ref_t[name], **rule) for name in layers}
    frames = []
    for stage, (act_c, act_t, grads) in per_stage.items():
        for name in layers:
            frames.append(pd.DataFrame({
                "attack": attack, "stage": stage, "layer": name, "unit": np.arange(len(grads[name])),
                "class": ref_class[name], "class_at_stage": classify_units(act_c[name], act_t[name], **rule),
                "grad_norm": grads[name], "act_clean": act_c[name], "act_triggered": act_t[name]}))
    table = pd.concat(frames, ignore_index=True)
    sizes = {name: len(grads[name]) for name in layers}
    for column, labels in (more_classes or {}).items():
        unknown = [name for name in labels if name not in sizes]
        if unknown:
            raise ValueError(f"more_classes[{column!r}] labels layers {unknown} not among {list(layers)}")
        for name, lab in labels.items():
            if len(lab) != sizes[name]:
                raise ValueError(f"more_classes[{column!r}][{name!r}] has {len(lab)} labels for {sizes[name]} units")
        blank = {name: np.full(sizes[name], None, dtype=object) for name in layers}  # a layer left out: missing
        table[column] = np.concatenate([np.asarray(labels.get(name, blank[name]), dtype=object)
                                        for _ in per_stage for name in layers])
    for column in ("class", "class_at_stage", *(more_classes or {})):
        table[column] = pd.Categorical(table[column], CLASSES)
    return table


def ordering_check(table: pd.DataFrame, class_col: str = "class",
                   by: Sequence[str] = ("attack", "stage", "layer")) -> pd.DataFrame:
    """Per group (default: attack, stage, layer) the number of units and the median
    gradient norm of each class, and whether Sec. 3.1's ordering holds on the medians:

    * ``holds`` — median backdoor > median hybrid > median clean; missing (``<NA>``) when
      one of the three classes has no unit in the group;
    * ``backdoor_gt_clean`` — the weaker claim, median backdoor > median clean (``<NA>``
      when either class is empty).
    """
    for col in (*by, class_col, "grad_norm"):
        if col not in table.columns:
            raise ValueError(f"table has no column {col!r}; columns: {', '.join(table.columns)}")
    rows = []
    for key, group in table.groupby(list(by), sort=False, observed=True):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key))
        med = {}
        for cls in ORDER:
            g = group.loc[group[class_col] == cls, "grad_norm"]
            row[f"n_{cls}"] = len(g)
            med[cls] = float(g.median()) if len(g) else float("nan")
            row[f"median_{cls}"] = med[cls]
        b, h, c = (med[k] for k in ORDER)
        row["holds"] = pd.NA if any(math.isnan(v) for v in (b, h, c)) else bool(b > h > c)
        row["backdoor_gt_clean"] = pd.NA if math.isnan(b) or math.isnan(c) else bool(b > c)
        rows.append(row)
    check = pd.DataFrame(rows)
    for col in ("holds", "backdoor_gt_clean"):
        check[col] = check[col].astype("boolean")
    return check


def ordering_summary(check: pd.DataFrame) -> str:
    """One sentence: in how many groups the full and the weaker ordering hold, of those
    where they can be tested."""
    full, weak = check["holds"].dropna(), check["backdoor_gt_clean"].dropna()
    untestable = len(check) - len(full)
    return (f"backdoor > hybrid > clean (median gradient norm) holds in {int(full.sum())} of {len(full)} groups "
            f"where all three classes have units ({untestable} of {len(check)} groups lack a class); "
            f"backdoor > clean holds in {int(weak.sum())} of {len(weak)}.")


def ordering_over_seeds(check: pd.DataFrame, by: Sequence[str] = ("attack", "stage", "layer")) -> pd.DataFrame:
    """Per group of ``by``, across the seeds of an :func:`ordering_check` made per seed
    (``by`` plus ``"seed"``): how many seeds there are, in how many each ordering could be
    tested (its classes all had units), and in how many it held.

    Why across seeds: one victim's counts move with its training. Notebook 31's seeds 0, 1
    and 2 gave backdoor > clean in 8 of 9, 5 of 7 and 6 of 8 groups under the activation rule,
    and 7 of 7, 3 of 6 and 5 of 6 under the authors' loss-change labelling (one pass per pruned unit, stop 37), so a claim about
    the ordering is read per group over several victims, not from one."""
    missing = [c for c in (*by, "seed", "holds", "backdoor_gt_clean") if c not in check.columns]
    if missing:
        raise ValueError(f"check has no column(s) {', '.join(missing)} (make it with ordering_check(..., "
                         f"by=(..., 'seed', ...))); columns: {', '.join(check.columns)}")
    if check.duplicated([*by, "seed"]).any():
        raise ValueError(f"check has several rows for one ({', '.join(by)}, seed): group it by more columns")
    g = check.groupby(list(by), sort=False, observed=True)
    out = pd.DataFrame({
        "seeds": g["seed"].nunique(),
        "full_tested": g["holds"].count(), "full_held": g["holds"].sum(),
        "weak_tested": g["backdoor_gt_clean"].count(), "weak_held": g["backdoor_gt_clean"].sum()})
    return out.astype(int).reset_index()
