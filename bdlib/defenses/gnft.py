"""GN-FT: gradient-norm-regularised fine-tuning (Zhou, Lin, Liu, ICASSP 2025, arXiv 2502.01152).

Observation (paper Sec. 3.1): on clean data, neurons that carry the backdoor have larger
gradients than clean neurons, so a fine-tuning objective that penalises the gradient norm

    L_GN(θ) = L(θ) + λ · ‖∇θ L(θ)‖                                      (paper Eq. 3)

pushes the model out of the sharp region the backdoor lives in, while L keeps clean
accuracy. Two ways to take its gradient:

* ``exact`` — double backpropagation: g = ∇L with ``create_graph=True``, then backward
  through L + λ‖g‖ (a Hessian-vector product per step; memory and time grow).
* ``approx`` — the first-order form of the authors' implementation (their ``ft_reg.py``):
  g1 = ∇L(θ);  g2 = ∇L(θ + r·g1/‖g1‖) on the same batch;  update (1−α)·g1 + α·g2.
  Since g2 ≈ g1 + r·H·g1/‖g1‖ and ∇‖g‖ = H·g/‖g‖, this equals ∇L + α·r·∇‖g‖, i.e. the
  exact gradient with λ = α·r, at the cost of two ordinary forward-backward passes.

``norm="per_tensor"`` normalises each parameter tensor separately (as the authors do),
which corresponds to the penalty λ·Σ_i ‖∇θ_i L‖; ``norm="global"`` uses one norm over all
parameters, i.e. λ·‖∇θ L‖. Defaults (authors' code): r = 0.05, α = 0.7, SGD lr 1e-3,
momentum 0.9, batch 256, 5 % clean data.

Implementation notes: the perturbation is applied in place and undone (no deepcopy per
step); both passes see the same dropout mask (the RNG state is replayed) and BatchNorm
running statistics are updated by the clean pass only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import check_choice, knob
from .base import CleanData, Defense
from .finetune import FinetuneKnobs, run_finetune, trainable

MODES = ("approx", "exact")
NORMS = ("per_tensor", "global")


def _directions(grads, norm: str, params=None):
    """Unit step directions: per tensor, one global norm, or ``"adaptive"`` (ASAM, Kwon et al.
    ICML 2021, as FT-SAM uses it): w²·g / ‖|w|·g‖, a unit step in weight-relative coordinates."""
    if norm == "per_tensor":
        return [g / (g.norm() + 1e-12) for g in grads]
    if norm == "adaptive":
        total = torch.sqrt(sum(((p.abs() * g) ** 2).sum() for p, g in zip(params, grads))) + 1e-12
        return [p.detach() * p.detach() * g / total for p, g in zip(params, grads)]
    total = torch.sqrt(sum((g * g).sum() for g in grads)) + 1e-12
    return [g / total for g in grads]


def _bn_buffers(model: nn.Module) -> list[torch.Tensor]:
    return [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for b in m.buffers()]


def approx_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, r: float, alpha: float,
                    norm: str = "per_tensor", loss_fn=F.cross_entropy):
    """(loss, (1−α)·∇L(θ) + α·∇L(θ + r·d)) with d the normalised gradient; θ is restored.

    With α = 1 and ``norm="global"`` this is exactly the SAM gradient (Foret et al. 2021)
    with ρ = r; with ``norm="adaptive"`` it is adaptive SAM, which FT-SAM uses.
    """
    params = trainable(model)
    rng = torch.get_rng_state()
    loss1 = loss_fn(model(x), y)
    g1 = torch.autograd.grad(loss1, params)
    buffers = [b.clone() for b in _bn_buffers(model)]
    with torch.no_grad():
        steps = [r * d for d in _directions(g1, norm, params)]
        for p, s in zip(params, steps):
            p.add_(s)
    try:
        torch.set_rng_state(rng)  # same dropout mask as the first pass
        g2 = torch.autograd.grad(loss_fn(model(x), y), params)
    finally:
        with torch.no_grad():
            for p, s in zip(params, steps):
                p.sub_(s)
            for b, saved in zip(_bn_buffers(model), buffers):
                b.copy_(saved)
    return loss1.item(), [(1 - alpha) * a + alpha * b for a, b in zip(g1, g2)]


def exact_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lam: float, norm: str = "per_tensor"):
    """(loss, ∇θ [L + λ·penalty]) by double backpropagation."""
    params = trainable(model)
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    if norm == "per_tensor":
        penalty = sum(g.norm() for g in grads)
    else:
        penalty = torch.sqrt(sum((g * g).sum() for g in grads))
    total = loss + lam * penalty
    return loss.item(), torch.autograd.grad(total, params)


@dataclass
class GNFTConfig(FinetuneKnobs):
    mode: str = knob("approx", choices=MODES)  # "approx" | "exact"
    r: float = knob(0.05, "(0, inf)")
    alpha: float = knob(0.7, "[0, 1]")
    norm: str = knob("per_tensor", choices=NORMS)  # "per_tensor" | "global"
    lr: float = knob(1e-3, "(0, inf)")  # the authors' ft_reg.py: SGD lr 1e-3, momentum 0.9, no weight decay or schedule
    weight_decay: float = knob(0.0, "[0, inf)")

    @property
    def lam(self) -> float:
        """λ of Eq. 3 implied by the finite-difference form."""
        return self.alpha * self.r


class GNFT(Defense):
    name = "gnft"
    Config = GNFTConfig

    def __init__(self, config: GNFTConfig, seed: int = 0):
        check_choice(config.mode, MODES, "GN-FT mode")
        check_choice(config.norm, NORMS, "GN-FT norm")
        if config.r <= 0 or not 0 <= config.alpha <= 1:
            raise ValueError(f"GN-FT needs r > 0 and alpha in [0, 1], got r={config.r}, alpha={config.alpha}")
        super().__init__(config, seed)

    def grad_fn(self):
        c = self.config
        if c.mode == "approx":
            return lambda m, x, y: approx_gradient(m, x, y, c.r, c.alpha, c.norm)
        return lambda m, x, y: exact_gradient(m, x, y, c.lam, c.norm)

    def defend(self, model, clean: CleanData, progress: bool = True):
        run_finetune(model, clean, self.config, grad_fn=self.grad_fn(), cosine=False, seed=self.seed,
                     progress=progress, desc=f"GN-FT ({self.config.mode})")
        return model
