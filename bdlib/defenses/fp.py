"""Fine-Pruning (Liu, Dolan-Gavitt & Garg, "Fine-Pruning: Defending Against Backdooring
Attacks on Deep Neural Networks", RAID 2018).

Backdoor neurons tend to be dormant on clean inputs, so: rank the units of a late layer by
their mean activation on the defender's clean data, prune them in increasing order in
steps of ``prune_step`` (1 % of the units) until clean accuracy has dropped by
``max_acc_drop`` (10 %, relative, as in BackdoorBench and the GN-FT authors' ``fp.py``),
keep the last model within that budget, then fine-tune with the pruned units held at zero.

``layer="classifier"`` prunes the inputs of the final linear layer (what the GN-FT authors
did, following BackdoorBench); ``layer="last_conv"`` prunes the output channels of the last
convolution (Liu et al.'s original choice) — the conv filter and, where the model names
one (``last_conv_norm``), the following BatchNorm's affine parameters, so the channel is
exactly zero after the norm. The layers are the model's declared parts
(:mod:`bdlib.models.contract`); a model without the chosen one is refused before any work
with ``DefenseNotApplicable`` (:meth:`FinePruning.check`). Clean accuracy is measured on the
defender's clean subset, the only data a defender holds.

The fine-tuning after pruning (``finetune``):

* ``"backdoorbench"`` (default): SGD, ``lr`` 0.01, momentum 0.9, weight decay 5e-4, cosine
  schedule, ``epochs`` (the profile's defense epochs) — BackdoorBench's FP config,
  SCLBD/BackdoorBench ``config/defense/fp/config.yaml`` (commit 59f6cda): ``epochs: 100``
  (line 10), ``batch_size: 256`` (12), ``lr: 0.01`` (14), ``lr_scheduler: CosineAnnealingLR``
  (15), ``client_optimizer: sgd`` (19), ``sgd_momentum: 0.9`` (20), ``wd: 0.0005`` (21),
  ``acc_ratio: 0.1`` (33).
* ``"authors"``: the GN-FT authors' FP, quantum-bitss/Audio-Backdoor-Attack ``fp.py``
  (commit 2b76b34): ``torch.optim.Adam(model.parameters(), lr=args.lr_ft)`` (line 202) with
  ``--lr_ft`` 0.01 (line 29), no weight decay, no schedule, and one call of
  ``train_finetuning`` (line 203): **one epoch** over the clean subset (``--val_ratio``
  0.05, ``--batch_size`` 256, shuffled: lines 26-27, 104, 118) in train mode (line 53).
  Here: Adam at ``lr`` (default 0.01, theirs), one epoch whatever ``epochs`` says (the
  profile passes its ``epochs`` to every defense; ``epochs=0`` still means pruning only);
  ``momentum`` and ``weight_decay`` are unused.
  ``report["finetune_optimizer"]`` / ``report["finetune_epochs"]`` record what ran.

Their pruning stage, which both settings share here, differs in ways not reproduced: it
measures clean accuracy on the *test* split (line 175), prunes ``num_pruned - 1`` units
at step ``num_pruned`` (line 169), and, as ``last_net`` is the pruned model itself rather
than a copy (lines 165, 189, 192), fine-tunes the model pruned one step *past* the
accuracy bound (the step that broke it, line 195). Here: the defender's clean subset,
exactly ``k`` units at step ``k``, and the last model within the bound.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from ..models import contract
from ..registry import check_choice, knob
from ..training import predict
from .base import CleanData, Defense
from .finetune import FinetuneKnobs, finetune, run_finetune, trainable

LAYERS = ("classifier", "last_conv")
FINETUNES = ("backdoorbench", "authors")


@torch.no_grad()
def mean_activation(model: nn.Module, module: nn.Module, feats: torch.Tensor, of_input: bool) -> torch.Tensor:
    """Mean activation per unit (input of a Linear, or ReLU'd conv output channel) on ``feats``."""
    store = []

    def hook(mod, inp, out):
        a = inp[0] if of_input else torch.relu(out)
        store.append(a.mean(dim=(0, 2, 3)) * len(a) if a.ndim == 4 else a.sum(0))

    h = module.register_forward_hook(hook)
    try:
        predict(model, feats)
    finally:
        h.remove()
    return torch.stack(store).sum(0) / len(feats)


@dataclass
class FPConfig(FinetuneKnobs):
    epochs: int = knob(100, "[0, inf)")  # fine-tuning after pruning; 0: pruning only
    layer: str = knob("classifier", choices=LAYERS)  # "classifier" | "last_conv"
    prune_step: float = knob(0.01, "(0, 1)")
    max_acc_drop: float = knob(0.10, "(0, 1)")
    # "backdoorbench": SGD + cosine for `epochs`; "authors": Adam at `lr`, one epoch (module docstring)
    finetune: str = knob("backdoorbench", choices=FINETUNES)


class FinePruning(Defense):
    name = "fp"
    Config = FPConfig

    def __init__(self, config: FPConfig, seed: int = 0):
        check_choice(config.layer, LAYERS, "Fine-Pruning layer")
        check_choice(config.finetune, FINETUNES, "Fine-Pruning finetune")
        if not 0 < config.prune_step < 1 or not 0 < config.max_acc_drop < 1:
            raise ValueError("prune_step and max_acc_drop must lie in (0, 1)")
        super().__init__(config, seed)
        self.report: dict = {}

    def _targets(self, model):
        """(layer name, module, (tensor, axis) pairs whose slices along ``axis`` belong to one unit);
        refuses a model without the layer the ``layer`` knob names."""
        if self.config.layer == "classifier":
            name, lin = contract.layer(model, "classifier", "Fine-Pruning", "layer='classifier' prunes its inputs")
            return name, lin, [(lin.weight, 1)]
        name, conv = contract.layer(model, "last_conv", "Fine-Pruning",
                                    "layer='last_conv' prunes its output channels; layer='classifier' may apply")
        targets = [(conv.weight, 0)] + ([(conv.bias, 0)] if conv.bias is not None else [])
        norm = contract.optional_layer(model, "last_conv_norm")
        if norm is not None:
            targets += [(norm[1].weight, 0), (norm[1].bias, 0)]
        return name, conv, targets

    @staticmethod
    def _mask(targets, units: list[int], n_units: int) -> list[torch.Tensor]:
        masks = []
        for tensor, axis in targets:
            keep = torch.ones(n_units, device=tensor.device)
            keep[units] = 0
            shape = [1] * tensor.ndim
            shape[axis] = n_units
            masks.append(keep.view(shape).expand_as(tensor).clone())
        return masks

    def check(self, model: nn.Module) -> None:
        """Fine-Pruning needs the layer its ``layer`` knob names: the declared ``classifier``
        (``"classifier"``, its inputs are pruned) or ``last_conv`` (``"last_conv"``, its output
        channels, with ``last_conv_norm`` where the model declares one)."""
        self._targets(model)

    def defend(self, model, clean: CleanData, progress: bool = True):
        self.check(model)
        c = self.config
        name, module, targets = self._targets(model)
        acts = mean_activation(model, module, clean.features, of_input=c.layer == "classifier")
        order = torch.argsort(acts).tolist()
        n_units = len(order)
        originals = [t.detach().clone() for t, _ in targets]
        labels = clean.labels.numpy()
        base = float(np.mean(predict(model, clean.features) == labels))
        pruned, curve = [], [(0, base)]
        step = max(1, math.ceil(n_units * c.prune_step))
        for k in range(step, n_units, step):
            with torch.no_grad():
                for (t, _), orig, m in zip(targets, originals, self._mask(targets, order[:k], n_units)):
                    t.copy_(orig * m)
            acc = float(np.mean(predict(model, clean.features) == labels))
            curve.append((k, acc))
            if (base - acc) / max(base, 1e-12) >= c.max_acc_drop:
                break
            pruned = order[:k]
        masks = self._mask(targets, pruned, n_units)
        with torch.no_grad():
            for (t, _), orig, m in zip(targets, originals, masks):
                t.copy_(orig * m)
        hooks = [t.register_hook(lambda g, m=m: g * m) for (t, _), m in zip(targets, masks)]
        try:
            if c.finetune == "authors":  # Audio-Backdoor-Attack fp.py:202-203: Adam, one epoch
                ft_epochs, ft_opt = min(c.epochs, 1), "Adam"
                finetune(model, clean, epochs=ft_epochs, batch_size=c.batch_size,
                         optimizer=torch.optim.Adam(trainable(model), lr=c.lr), seed=self.seed,
                         progress=progress, desc="FP fine-tuning (authors')")
            else:
                ft_epochs, ft_opt = c.epochs, "SGD"
                run_finetune(model, clean, c, seed=self.seed, progress=progress, desc="FP fine-tuning")
        finally:
            for h in hooks:
                h.remove()
        self.report = {"layer": name, "n_units": n_units, "pruned_units": sorted(pruned),
                       "n_pruned": len(pruned), "clean_acc_curve": curve, "finetune": c.finetune,
                       "finetune_optimizer": ft_opt, "finetune_epochs": ft_epochs}
        return model
