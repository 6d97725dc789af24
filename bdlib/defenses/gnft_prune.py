"""GN-FT followed by the authors' post-fine-tuning pruning stage (``ft_reg.py``, ``is_prune``).

Source: quantum-bitss/Audio-Backdoor-Attack ``ft_reg.py`` at commit e5bcba58c515 (the only
stored version); line numbers below are that file's. After GN-FT's fine-tuning (lines
261-278: SGD lr 1e-3, momentum 0.9, 300 epochs of ``train_finetuning_reg`` on the 5 %
clean "val" set), the script scores every convolutional unit and prunes the best-scored ones:

1. **Units** (lines 241, 282-285, 44-55): every ``nn.Conv2d`` whose name does not contain
   ``'shortcut'`` (``--layer_type conv``, line 31); a unit is one output channel, i.e. one
   row of the conv's ``.weight`` (lines 150-158). The earlier two-layer list (line 282) is
   overwritten by all of them (line 284).
2. **Gradient change** (lines 266-268, 281, 297-303): ``grad_s`` is the update direction
   ``final_gradients`` ((1−α)·g1 + α·g2, line 109) of the *last batch of the first epoch*,
   ``grad_t`` that of the last batch of the last epoch; a unit's change is
   ``torch.norm(grad_t[i] - grad_s[i])`` — the norm of the **whole layer's** difference
   (line 302), appended once per unit of that layer (line 301), so every unit of a layer
   gets the same value.
3. **Validation-loss change** (lines 288, 291, 179-190, 173-177, 125-139): on the
   fine-tuned model in eval mode, the clean-"val" loss with one unit's weight row set to 0
   (bias and following BatchNorm kept) minus the unpruned loss. (Lines 286-290 also compute
   the same on the clean and backdoored *test* sets — CLC, BLC — used only by a
   commented-out plot, lines 320-328.)
4. **Score** (lines 305-319): both lists are standardised over all units (sklearn
   ``StandardScaler``, lines 309-311), combined as ``0.9·z_grad + 0.1·z_vlc`` (``w = 0.9``,
   lines 306, 312-314), min-max normalised and inverted (``normalize_and_invert``, lines
   192-198, 315: high score = small gradient change and small loss change), and set to 0 for
   units whose removal raises the val loss (``vlc > t_clc = 0``, lines 305, 317-319).
5. **Pruning** (lines 329-344): units sorted by score, descending (stable, line 336); for
   each ratio of ``[0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.7, 0.9]`` (line 338)
   the top ``int(ratio · n_units)`` units (line 340) of a copy of the fine-tuned model have
   their weight rows zeroed (``pruning``, lines 163-171, 341-342), and test accuracy and ASR
   are **printed** (lines 343-344). Nothing is selected, saved or returned: the script ends
   there. Which ratio (if any) the paper's GN-FT numbers used is not recorded.

Here: :class:`GNFTPrune` runs :class:`bdlib.defenses.gnft.GNFT` unchanged (its knobs, its
loop; the fine-tuned model is GN-FT's bit for bit), recording the update direction of the
last batch of the first and of the last epoch through GN-FT's ``grad_fn`` and
``on_epoch_end`` hooks, then does steps 1-5 on the defender's clean subset (the data GN-FT
fine-tunes on, as the authors' val set is) and keeps one ratio.

Deviations, each a knob where it is a choice:

* **Selection** (the authors have none): ``selection="acc_drop"`` (default) keeps the
  largest ratio whose clean accuracy on the defender's clean subset stays within
  ``max_acc_drop`` (relative, strict ``<``, 10 %) of the unpruned fine-tuned model's — the
  bound Fine-Pruning and ANP's sweep use here (BackdoorBench's ``acc_ratio``), with the
  defender's clips in place of the test set, since a defender has no test or backdoor data;
  ``"min_loss"``: the ratio (0 = no pruning included) with the lowest clean loss;
  ``"largest"``: the largest ratio in ``ratios`` (``ratios=(r,)`` prunes at a fixed ``r``).
  The guard is measured on the clips the scores and the fine-tuning used (as the authors'
  vlc is), so it is optimistic.
* **Layers**: ``prune_layers="conv"`` (default) takes every ``nn.Conv2d`` as the authors
  do, but only on a model that declares the defense contract
  (:mod:`bdlib.models.contract`) and its ``last_conv``; a model without them is refused
  with ``DefenseNotApplicable`` naming the model and ``last_conv``. The contract has no
  "every convolution" part, so the set is taken by type, as ``get_layerName_from_type``
  does; it equals the contract's ``conv_norm_pairs`` convolutions plus ``last_conv`` on
  every registered model except LargeCNN (no BatchNorm, so no pairs: its conv1-conv4 are
  covered here but declared nowhere). ``prune_layers="last_conv"`` prunes the declared
  ``last_conv`` alone.
* **Gradient change**: ``grad_change="layer"`` (default) is the authors' whole-layer norm;
  ``"unit"`` takes each unit's own row of the difference, what lines 301-302 presumably
  meant (the loop variable ``nidx`` is unused).
* **Epochs**: GN-FT's ``epochs`` knob (the profile's budget), not the hard-coded 300 (line
  263). With ``epochs=1`` the first and last epoch coincide, every gradient change is 0 and
  only the loss change ranks units.
* **Loss averaging**: the loss is the mean over clips (:func:`clean_loss_acc`), not the mean of
  per-batch means (line 137), which weights a short last batch more. Each unit is zeroed in
  place and restored rather than on a deep copy (lines 181-185): the same numbers.
  (``bdlib.observation.unit_loss_changes`` computes the same change faster by expanding the
  batch at the layer, but that cannot pass a residual block's skip connection, so it is not
  used here.)
* **Degenerate scores**: where all combined scores are equal, ``normalize_and_invert``
  divides 0 by 0 (NaN, line 196); here every unit then scores 1 (before the ``vlc > 0`` rule).

``report``: the layers and unit count, the ranking (layer, unit, score, gradient change,
loss change) in pruning order, the sweep (ratio, units pruned, clean loss, clean accuracy
per ratio, ratio 0 = the fine-tuned model), the selected ratio and the pruned units.
Evaluating other ratios needs the unpruned model: GN-FT with the same knobs and seed
(``"gnft"``) is it, and ``report["ranking"]`` with :func:`prune_units` rebuilds any ratio.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm  # text bars, as the fine-tuning loop's

from ..models import contract
from ..registry import check_choice, knob
from .base import CleanData, model_device
from .finetune import trainable
from .gnft import GNFT, GNFTConfig

#: ft_reg.py line 338
AUTHORS_RATIOS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.7, 0.9)
LAYER_SETS = ("conv", "last_conv")
GRAD_CHANGES = ("layer", "unit")
SELECTIONS = ("acc_drop", "min_loss", "largest")
DEFENSE = "GN-FT+pruning"


# --- pure scoring and selection ------------------------------------------------------------
def standardize(values) -> np.ndarray:
    """(v − mean) / std over all units, population std — sklearn ``StandardScaler().fit_transform``
    on a column (ft_reg.py lines 309-311), including its rule that a zero std scales by 1."""
    v = np.asarray(values, dtype=np.float64)
    std = v.std()
    return (v - v.mean()) / (std if std > 0 else 1.0)


def normalize_and_invert(scores) -> np.ndarray:
    """1 − (s − min) / (max − min) (ft_reg.py lines 192-198). All-equal scores, where the authors'
    code divides 0 by 0, give 1 for every unit (a deviation)."""
    s = np.asarray(scores, dtype=np.float64)
    span = s.max() - s.min()
    return np.ones_like(s) if span == 0 else 1.0 - (s - s.min()) / span


def combined_scores(grad_change, loss_change, w: float = 0.9, loss_threshold: float = 0.0) -> np.ndarray:
    """The authors' pruning score per unit (ft_reg.py lines 304-319): standardise the gradient
    change and the val-loss change, ``w·z_grad + (1−w)·z_loss``, normalise and invert (high =
    prune first), and 0 for every unit whose removal raises the loss by more than
    ``loss_threshold`` (``t_clc = 0``)."""
    g = np.asarray(grad_change, dtype=np.float64)
    lc = np.asarray(loss_change, dtype=np.float64)
    if g.shape != lc.shape or g.ndim != 1:
        raise ValueError(f"grad_change and loss_change must be 1-D and of one shape, got {g.shape} and {lc.shape}")
    scores = normalize_and_invert(w * standardize(g) + (1 - w) * standardize(lc))
    scores[lc > loss_threshold] = 0.0
    return scores


def pruning_order(scores) -> np.ndarray:
    """Unit indices by score, highest first; ties keep their original (layer, unit) order, as
    Python's stable ``sorted(..., reverse=True)`` does (ft_reg.py line 336)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def n_to_prune(ratio: float, n_units: int) -> int:
    """``int(ratio · n_units)`` (ft_reg.py line 340): rounded down, so a small ratio of a small
    model prunes nothing."""
    return int(ratio * n_units)


def layer_grad_change(g_start: torch.Tensor, g_end: torch.Tensor, per: str = "layer") -> np.ndarray:
    """One value per unit (output channel, dim 0) of a layer: ``per="layer"`` the norm of the whole
    layer's difference repeated for every unit (ft_reg.py lines 300-303: ``torch.norm(grad_diff)``
    inside the per-unit loop); ``per="unit"`` each unit's own row norm."""
    check_choice(per, GRAD_CHANGES, "gradient change")
    diff = (g_end - g_start).detach().double().cpu()
    units = diff.shape[0]
    if per == "layer":
        return np.full(units, float(diff.norm()))
    return diff.reshape(units, -1).norm(dim=1).numpy()


def select_ratio(sweep: list[dict], rule: str, max_acc_drop: float = 0.10) -> float:
    """The ratio kept from a sweep whose first row is ratio 0 (the unpruned model) and whose rows
    carry ``ratio``, ``clean_loss`` and ``clean_acc``. The authors select nothing (ft_reg.py lines
    339-344 print each ratio's test accuracy and ASR); the rules here are ours:

    * ``"acc_drop"`` — the largest ratio with (acc₀ − acc) / acc₀ < ``max_acc_drop``; 0 if none;
    * ``"min_loss"`` — the lowest clean loss, ratio 0 included; a tie goes to the larger ratio;
    * ``"largest"`` — the largest ratio swept.
    """
    check_choice(rule, SELECTIONS, "selection rule")
    if not sweep or sweep[0]["ratio"] != 0:
        raise ValueError("the sweep must start with the unpruned model (ratio 0)")
    if rule == "largest":
        return max(row["ratio"] for row in sweep)
    if rule == "min_loss":
        return min(sweep, key=lambda row: (row["clean_loss"], -row["ratio"]))["ratio"]
    base = sweep[0]["clean_acc"]
    ok = [row["ratio"] for row in sweep if (base - row["clean_acc"]) / max(base, 1e-12) < max_acc_drop]
    return max(ok, default=0.0)


# --- the model side --------------------------------------------------------------------------
def prune_layers(model: nn.Module, which: str = "conv") -> dict[str, nn.Conv2d]:
    """{name: conv} whose output channels are scored and pruned, in module order. Refuses (naming the
    model and ``last_conv``) a model that does not declare the contract or its last convolution."""
    check_choice(which, LAYER_SETS, "GN-FT pruning layers")
    name, last = contract.layer(model, "last_conv", DEFENSE, "its units are the output channels of convolutions")
    if which == "last_conv":
        return {name: last}
    # ft_reg.py lines 44-55: every Conv2d whose name does not contain 'shortcut'
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and "shortcut" not in n}


def prune_units(layers: dict[str, nn.Conv2d], units) -> None:
    """Zero the weight row of each (layer, unit) in place — ft_reg.py ``pruning`` (lines 163-171):
    bias and any following BatchNorm are kept, so a pruned unit outputs its bias."""
    with torch.no_grad():
        for name, k in units:
            layers[name].weight[int(k)] = 0.0


@torch.no_grad()
def clean_loss_acc(model: nn.Module, clean: CleanData, batch_size: int = 512) -> tuple[float, float]:
    """Mean cross-entropy over clips and accuracy on ``clean``, eval mode (as ``temp_test``, ft_reg.py
    lines 125-139, up to its mean of per-batch means)."""
    was = model.training
    model.eval()
    dev = model_device(model)
    loss, correct = 0.0, 0
    try:
        for i in range(0, len(clean), batch_size):
            x, y = clean.features[i:i + batch_size].to(dev), clean.labels[i:i + batch_size].to(dev)
            logits = model(x)
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(1) == y).sum())
    finally:
        model.train(was)
    return loss / len(clean), correct / len(clean)


def unit_loss_changes(model: nn.Module, layers: dict[str, nn.Conv2d], clean: CleanData,
                      batch_size: int = 512, progress: bool = False) -> np.ndarray:
    """Per unit, in (layer, unit) order: the clean loss with the unit's weight row zeroed minus the
    unpruned loss, eval mode — ``get_loss_change`` with ``prune_one_neuron`` (ft_reg.py lines 173-190)
    on the val set (line 291). The model is restored after each unit; the base and every pruned loss
    come from one function, so a unit that changes nothing scores exactly 0."""
    base, _ = clean_loss_acc(model, clean, batch_size)
    out = []
    units = [(m, k) for m in layers.values() for k in range(m.out_channels)]
    with torch.no_grad():
        for m, k in tqdm(units, desc="GN-FT pruning: loss change per unit", disable=not progress):
            row = m.weight[k].clone()
            m.weight[k] = 0.0
            try:
                out.append(clean_loss_acc(model, clean, batch_size)[0] - base)
            finally:
                m.weight[k] = row
    return np.asarray(out, dtype=np.float64)


@dataclass
class GNFTPruneConfig(GNFTConfig):
    ratios: tuple[float, ...] = knob(AUTHORS_RATIOS, "(0, 1]", nonempty=True)  # ft_reg.py line 338
    prune_layers: str = knob("conv", choices=LAYER_SETS)  # "conv": every Conv2d (authors) | "last_conv"
    grad_change: str = knob("layer", choices=GRAD_CHANGES)  # "layer": authors' whole-layer norm | "unit"
    grad_weight: float = knob(0.9, "[0, 1]")  # w, line 306
    loss_threshold: float = knob(0.0, "(-inf, inf)")  # t_clc, line 305: units above it score 0
    selection: str = knob("acc_drop", choices=SELECTIONS)  # ours: the authors select nothing
    max_acc_drop: float = knob(0.10, "(0, 1)")  # "acc_drop": relative clean-accuracy drop allowed


class GNFTPrune(GNFT):
    """GN-FT, then the authors' gradient-change / loss-change pruning (module docstring)."""

    name = "gnft_prune"
    Config = GNFTPruneConfig

    def __init__(self, config: GNFTPruneConfig, seed: int = 0):
        check_choice(config.prune_layers, LAYER_SETS, "GN-FT pruning layers")
        check_choice(config.grad_change, GRAD_CHANGES, "gradient change")
        check_choice(config.selection, SELECTIONS, "selection rule")
        super().__init__(config, seed)
        self.report: dict = {}
        self._watch: list[int] = []
        self._last: list[torch.Tensor] | None = None

    def grad_fn(self):
        """GN-FT's update direction, unchanged; the watched layers' part of it is kept per batch."""
        inner = super().grad_fn()

        def recording(model, x, y):
            loss, grads = inner(model, x, y)
            self._last = [grads[i].detach().clone() for i in self._watch]
            return loss, grads

        return recording

    def check(self, model: nn.Module) -> None:
        """GN-FT+pruning needs the model's declared ``last_conv`` (with either ``prune_layers``):
        its units are convolution output channels (:func:`prune_layers`)."""
        prune_layers(model, self.config.prune_layers)

    def defend(self, model, clean: CleanData, progress: bool = True, on_epoch_end=None):
        self.check(model)  # refuses before any work (GN-FT's defend below checks again: the same lookup)
        c = self.config
        layers = prune_layers(model, c.prune_layers)
        index = {id(p): i for i, p in enumerate(trainable(model))}
        frozen = [n for n, m in layers.items() if id(m.weight) not in index]
        if frozen:
            raise ValueError(f"{DEFENSE}: the weights of {', '.join(frozen)} do not require gradients")
        self._watch = [index[id(m.weight)] for m in layers.values()]
        marks: dict[str, list[torch.Tensor]] = {}

        def mark(epoch, net):
            if self._last is not None:  # grad_s: the first epoch's last batch (ft_reg.py 266-268); grad_t: the last
                marks.setdefault("start", self._last)
                marks["end"] = self._last
            if on_epoch_end is not None:
                on_epoch_end(epoch, net)

        try:
            super().defend(model, clean, progress=progress, on_epoch_end=mark)
        finally:
            self._last = None
        if "start" not in marks:
            raise ValueError(f"{DEFENSE}: GN-FT took no step (every batch had fewer than 2 clips)")
        grad = np.concatenate([layer_grad_change(a, b, c.grad_change) for a, b in zip(marks["start"], marks["end"])])
        lc = unit_loss_changes(model, layers, clean, progress=progress)
        units = [(n, k) for n, m in layers.items() for k in range(m.out_channels)]
        scores = combined_scores(grad, lc, c.grad_weight, c.loss_threshold)
        order = pruning_order(scores)
        ranked = [units[i] for i in order]

        originals = {n: m.weight.detach().clone() for n, m in layers.items()}

        def restore():
            with torch.no_grad():
                for n, m in layers.items():
                    m.weight.copy_(originals[n])

        loss0, acc0 = clean_loss_acc(model, clean)
        sweep = [{"ratio": 0.0, "n_pruned": 0, "clean_loss": loss0, "clean_acc": acc0}]
        for ratio in c.ratios:
            k = n_to_prune(ratio, len(units))
            prune_units(layers, ranked[:k])
            loss, acc = clean_loss_acc(model, clean)
            restore()
            sweep.append({"ratio": float(ratio), "n_pruned": k, "clean_loss": loss, "clean_acc": acc})
        chosen = select_ratio(sweep, c.selection, c.max_acc_drop)
        k = n_to_prune(chosen, len(units))
        prune_units(layers, ranked[:k])
        model.eval()
        self.report = {
            "layers": list(layers), "n_units": len(units), "grad_change": c.grad_change, "selection": c.selection,
            "selected_ratio": chosen, "n_pruned": k, "pruned_units": [[n, int(u)] for n, u in ranked[:k]],
            "clean_loss_before_pruning": loss0, "clean_acc_before_pruning": acc0, "sweep": sweep,
            "per_ratio_clean_loss": {str(row["ratio"]): row["clean_loss"] for row in sweep},
            "ranking": [[units[i][0], int(units[i][1]), float(scores[i]), float(grad[i]), float(lc[i])]
                        for i in order],
        }
        return model
