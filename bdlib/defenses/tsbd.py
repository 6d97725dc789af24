"""TSBD (Lin et al., "Unveiling and Mitigating Backdoor Vulnerabilities based on Unlearning
Weight Changes and Backdoor Activeness", NeurIPS 2024) — the GN-FT authors' previous
defense; their audio version is ``tsbd.py`` in quantum-bitss/Audio-Backdoor-Attack.

Two observations drive it:

1. **Unlearning weight changes.** Gradient *ascent* on clean data (clean unlearning) moves
   the weights of backdoor-related neurons more than those of clean neurons. TSBD
   unlearns a copy of the model (Adam, lr 1e-4) until its clean accuracy falls to chance,
   ranks every convolutional neuron (output channel) by its L1 weight change, and in the
   original model **zero-reinitialises** the top ``neuron_ratio`` of neurons — within them
   only the ``weight_ratio`` share of most-changed weights (authors: 0.7).
2. **Backdoor activeness.** Backdoored neurons have larger gradients on clean data, so the
   recovery fine-tuning penalises the gradient norm: GN-FT's two-pass update
   (``gnft.approx_gradient``; r = 0.05, α = 0.7) with SGD lr 0.01, momentum 0.9.

Neuron ratio: the paper sweeps it; 0.1 of all conv channels is our default (it is a knob).
Models without convolutions are rejected: the ranking is over conv output channels.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..metrics import accuracy
from ..models.contract import DefenseNotApplicable
from ..registry import knob
from ..training import batches
from .base import CleanData, Defense, model_device
from .finetune import FinetuneKnobs, run_finetune
from .gnft import approx_gradient


@dataclass
class TSBDConfig(FinetuneKnobs):
    epochs: int = knob(100, "[0, inf)")  # the final fine-tuning; 0: unlearn and zero only
    unlearn_lr: float = knob(1e-4, "(0, inf)")
    unlearn_max_epochs: int = knob(100, "[1, inf)")
    # stop unlearning at (or below) this clean accuracy: chance for 10 classes
    unlearn_floor: float = knob(0.10, "[0, 1]")
    neuron_ratio: float = knob(0.10, "(0, 1]")  # share of conv neurons zero-reinitialised
    weight_ratio: float = knob(0.7, "(0, 1]")  # share of the selected neurons' weights zeroed (largest change first)
    r: float = knob(0.05, "(0, inf)")
    alpha: float = knob(0.7, "[0, 1]")
    weight_decay: float = knob(0.0, "[0, inf)")


def conv_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def clean_unlearn(model: nn.Module, clean: CleanData, lr: float, max_epochs: int, floor: float, batch_size: int,
                  seed: int) -> tuple[int, float]:
    """Gradient ascent on the clean subset until clean accuracy <= ``floor`` (or the share of
    the most frequent label, which a model collapsed onto one class still scores); returns
    (epochs, accuracy)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    device = model_device(model)
    floor = max(floor, float(np.bincount(clean.labels.numpy()).max() / len(clean)))
    acc = accuracy(model, clean.features, clean.labels.numpy())
    epoch = 0
    while acc > floor and epoch < max_epochs:
        model.train()
        for idx in batches(len(clean), batch_size, gen):
            if len(idx) < 2:
                continue
            opt.zero_grad(set_to_none=True)
            x, y = clean.features[idx].to(device), clean.labels[idx].to(device)
            (-F.cross_entropy(model(x), y)).backward()
            opt.step()
        epoch += 1
        acc = accuracy(model, clean.features, clean.labels.numpy())
    return epoch, acc


class TSBD(Defense):
    name = "tsbd"
    Config = TSBDConfig

    def __init__(self, config: TSBDConfig, seed: int = 0):
        if not 0 < config.neuron_ratio <= 1 or not 0 < config.weight_ratio <= 1:
            raise ValueError("neuron_ratio and weight_ratio must be in (0, 1]")
        if config.r <= 0 or not 0 <= config.alpha <= 1:
            raise ValueError(f"TSBD needs r > 0 and alpha in [0, 1], got r={config.r}, alpha={config.alpha}")
        super().__init__(config, seed)
        self.report: dict = {}

    @staticmethod
    def _convs(model: nn.Module) -> dict[str, nn.Conv2d]:
        """Every ``nn.Conv2d`` of the model, taken by type (the contract has no "every
        convolution" part); refuses a model that has none."""
        convs = conv_layers(model)
        if not convs:
            raise DefenseNotApplicable(f"TSBD cannot defend {type(model).__name__}: it has no nn.Conv2d layer "
                                       "(TSBD ranks and zeroes convolutional neurons)")
        return convs

    def check(self, model: nn.Module) -> None:
        """TSBD needs at least one ``nn.Conv2d``: its neurons are convolution output channels."""
        self._convs(model)

    def defend(self, model: nn.Module, clean: CleanData, progress: bool = True) -> nn.Module:
        self.check(model)
        c = self.config
        convs = self._convs(model)
        torch.manual_seed(self.seed)
        unlearned = copy.deepcopy(model)
        epochs, acc = clean_unlearn(unlearned, clean, c.unlearn_lr, c.unlearn_max_epochs, c.unlearn_floor,
                                    c.batch_size, self.seed)
        after = conv_layers(unlearned)
        # stage 1: neuron weight change, ranked over every conv output channel of the model
        changes = {n: (after[n].weight - m.weight).detach().abs() for n, m in convs.items()}
        ranked = sorted(((float(d[k].sum()), n, k) for n, d in changes.items() for k in range(d.shape[0])),
                        reverse=True)
        top = ranked[: max(1, int(round(c.neuron_ratio * len(ranked))))]
        pooled = torch.cat([changes[n][k].flatten() for _, n, k in top])
        threshold = torch.quantile(pooled, 1 - c.weight_ratio)  # keep the weight_ratio largest changes
        zeroed = 0
        with torch.no_grad():
            for _, n, k in top:
                hit = changes[n][k] >= threshold
                convs[n].weight[k][hit] = 0.0
                zeroed += int(hit.sum())
        # stage 2: activeness-aware (gradient-norm regularised) fine-tuning
        run_finetune(model, clean, c, grad_fn=lambda m, x, y: approx_gradient(m, x, y, c.r, c.alpha), cosine=True,
                     seed=self.seed, progress=progress, desc="TSBD fine-tuning")
        self.report = {"unlearn_epochs": epochs, "unlearned_clean_acc": acc, "n_neurons": len(ranked),
                       "reinitialised": [[n, k] for _, n, k in top], "n_weights_zeroed": zeroed}
        return model
