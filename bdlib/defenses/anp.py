"""ANP: Adversarial Neuron Pruning (Wu & Wang, "Adversarial Neuron Perturbation Exposes
Backdoors in Pretrained Models", NeurIPS 2021).

Backdoor neurons are the ones that, when slightly perturbed, make a clean model fail.
ANP gives every BatchNorm channel a mask m ∈ [0, 1] and learns it on clean data against an
adversary that perturbs the channels multiplicatively (weight × (m + δ), bias × (1 + ξ),
|δ|, |ξ| ≤ ε):

    min_m  α · L(m) + (1 − α) · max_{δ, ξ} L(m + δ, 1 + ξ)

(one signed ascent step of size ε for the adversary, SGD with momentum for the mask),
then prunes the channels whose mask fell below ``threshold`` (their BN weight is zeroed).
Defaults are BackdoorBench's: ε 0.4, α 0.2, mask lr 0.2, threshold 0.2. The original runs
2000 iterations of batch 128; here the iteration budget is ``epochs`` passes over the
defender's clean subset (the profile's defense epochs), BatchNorm in eval mode.

The masked layers are the model's declared ``norm_layers`` (:mod:`bdlib.models.contract`);
a model without any is refused with ``DefenseNotApplicable``: the masks live on BN channels.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from ..training import batches
from ..models import contract
from ..registry import Checked, knob
from .base import CleanData, Defense, model_device


@dataclass
class ANPConfig(Checked):
    epochs: int = knob(100, "[1, inf)")  # passes of mask optimisation over the clean subset
    batch_size: int = knob(128, "[1, inf)")
    eps: float = knob(0.4, "[0, inf)")  # perturbation budget
    alpha: float = knob(0.2, "[0, 1]")  # weight of the natural loss
    mask_lr: float = knob(0.2, "(0, inf)")
    threshold: float = knob(0.2, "(0, 1)")  # prune channels whose mask ends below this


class _Perturbation:
    """Forward hooks that turn y = γ·x̂ + β into (m + δ)·γ·x̂ + (1 + ξ)·β on every BN layer."""

    def __init__(self, bns: dict[str, nn.BatchNorm2d]):
        self.bns = bns
        def per_channel(b, value):  # one learnable value per BN channel, on the layer's device
            return torch.full((b.num_features,), value, device=b.weight.device, requires_grad=True)

        self.mask = {n: per_channel(b, 1.0) for n, b in bns.items()}
        self.delta = {n: per_channel(b, 0.0) for n, b in bns.items()}
        self.xi = {n: per_channel(b, 0.0) for n, b in bns.items()}
        self.perturb = False
        self.handles = [b.register_forward_hook(self._hook(n)) for n, b in bns.items()]

    def _hook(self, name):
        def hook(module, inputs, y):
            shape = (1, -1) + (1,) * (y.dim() - 2)
            beta = module.bias.view(shape)
            if not self.perturb:
                return self.mask[name].view(shape) * (y - beta) + beta
            scale, shift = self.mask[name] + self.delta[name], 1 + self.xi[name]
            return scale.view(shape) * (y - beta) + shift.view(shape) * beta

        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


class ANP(Defense):
    name = "anp"
    Config = ANPConfig

    def __init__(self, config: ANPConfig, seed: int = 0):
        if not 0 <= config.alpha <= 1 or config.eps < 0 or not 0 < config.threshold < 1:
            raise ValueError("ANP needs alpha in [0, 1], eps >= 0 and threshold in (0, 1)")
        super().__init__(config, seed)
        self.report: dict = {}

    def defend(self, model: nn.Module, clean: CleanData, progress: bool = True) -> nn.Module:
        c = self.config
        bns = contract.layers(model, "norm_layers", "ANP", "ANP masks and perturbs BatchNorm channels")
        torch.manual_seed(self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        device = model_device(model)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        pert = _Perturbation(bns)
        masks, noise = list(pert.mask.values()), [*pert.delta.values(), *pert.xi.values()]
        opt = torch.optim.SGD(masks, lr=c.mask_lr, momentum=0.9)
        try:
            for _ in tqdm(range(c.epochs), desc="ANP mask optimisation", disable=not progress):
                for idx in batches(len(clean), c.batch_size, gen):
                    x, y = clean.features[idx].to(device), clean.labels[idx].to(device)
                    if c.eps > 0:  # adversary: random start, one signed ascent step, clipped to ±eps
                        with torch.no_grad():
                            for t in noise:
                                t.uniform_(-c.eps, c.eps)
                        pert.perturb = True
                        grads = torch.autograd.grad(F.cross_entropy(model(x), y), noise)
                        with torch.no_grad():
                            for t, g in zip(noise, grads):
                                t.add_(c.eps * g.sign()).clamp_(-c.eps, c.eps)
                    pert.perturb = False
                    loss = c.alpha * F.cross_entropy(model(x), y)
                    if c.eps > 0:
                        pert.perturb = True
                        loss = loss + (1 - c.alpha) * F.cross_entropy(model(x), y)
                        pert.perturb = False
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    with torch.no_grad():
                        for m in masks:
                            m.clamp_(0, 1)
        finally:
            pert.remove()
            for p in model.parameters():
                p.requires_grad_(True)
        pruned = {}
        with torch.no_grad():
            for n, bn in bns.items():
                idx = torch.nonzero(pert.mask[n] < c.threshold).flatten()
                bn.weight[idx] = 0.0
                pruned[n] = idx.tolist()
        self.report = {"pruned_channels": pruned, "n_channels": sum(b.num_features for b in bns.values()),
                       "masks": {n: m.detach().tolist() for n, m in pert.mask.items()}}
        return model.eval()
