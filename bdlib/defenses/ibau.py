"""I-BAU: Implicit Backdoor Adversarial Unlearning (Zeng et al., "Adversarial Unlearning of
Backdoors via Implicit Hypergradient", ICLR 2022; authors' code: YiZeng623/I-BAU).

Why it can work without knowing the trigger: a backdoor is a *universal* perturbation that
flips many clean inputs, so I-BAU solves the minimax

    min_θ  max_{δ}  (1/n) Σ L(f_θ(x_i + δ), y_i)

on the defender's clean data. The inner maximisation (the universal perturbation δ, here on
the model's input: the MFCC map) depends on θ, so the outer gradient is the *implicit
hypergradient*  ∂L_out/∂θ + (∂Φ/∂θ)ᵀ v,  with  v = (I − ∂Φ/∂δ)⁻ᵀ ∂L_out/∂δ  approximated by
``K`` fixed-point iterations, where Φ(δ, θ) = δ − η ∇_δ L_in(δ, θ) is one gradient step of the
inner problem (Grazzi et al., "On the Iteration Complexity of Hypergradient Computation").

Each round, as in the authors' code: (1) a fresh δ is fitted by SGD (lr 10) over the clean
batches, maximising the cross-entropy against the model's *own* predictions (regulariser
0.001·‖δ‖²), then projected onto an L2 ball of radius 10; (2) one pass of Adam over the
clean batches takes hypergradient steps on θ, with δ added to a ``portion`` of each batch
(the inner loss of Φ uses the first clean batch with its true labels, as in the original).
The model stays in eval mode (BatchNorm statistics frozen), as in the original. δ and the
per-batch carry mask live on the model's device; which clips carry δ is drawn on the CPU
generator, so the selection is the same on every device.

Units: the original's δ lives on CIFAR images standardised to unit variance, where lr 10
and radius 10 (≈ 18 % of a typical image norm, √3072 ≈ 55) make sense. MFCC values have a
standard deviation of ~55, so δ is parameterised here in the same standardised units,
x + σ·u with σ the clean features' standard deviation; every hyper-parameter of the
original then keeps its meaning (reported norms are ‖u‖).

Defaults are BackdoorBench's (Adam lr 1e-4, K = 5, 5 rounds, batch 100, portion 0.01).
Deviations: the number of rounds is the ``epochs`` knob, which the profile sets (100 at
the default profile: with 5 % clean data that is one batch per round, ~100 outer steps,
about what 5 rounds over a 5 % CIFAR-10 subset give); at least one clip per batch carries
δ (0.01 of a batch smaller than 100 would be none). The original fits δ with one SGD step
per clean batch; on a 5 % CIFAR-10 subset that is 25 steps, but a one-batch audio clean set
would get a single step and δ would stay near zero. ``pert_steps`` sets the number of δ
steps per round (cycling over the clean batches); ``None`` keeps one pass. I-BAU needs only
gradients, so it applies to any differentiable model, recurrent and attention models included.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from ..training import batches
from ..registry import Checked, knob
from .base import CleanData, Defense, model_device


@dataclass
class IBAUConfig(Checked):
    epochs: int = knob(5, "[1, inf)")  # unlearning rounds (original n_rounds)
    batch_size: int = knob(100, "[1, inf)")
    lr: float = knob(1e-4, "(0, inf)")  # outer Adam
    K: int = knob(5, "[1, inf)")  # fixed-point iterations of the hypergradient
    inner_lr: float = knob(0.1, "(0, inf)")  # step η of the inner map Φ
    pert_lr: float = knob(10.0, "(0, inf)")  # SGD step of the per-round perturbation fit (standardised units)
    pert_steps: int | None = knob(None, "[1, inf)")  # SGD steps of that fit; None: one pass over the clean batches
    radius: float = knob(10.0, "(0, inf)")  # L2 ball δ is projected onto after the fit (standardised units)
    reg: float = knob(0.001, "[0, inf)")  # weight of ‖δ‖² in the inner loss
    portion: float = knob(0.01, "(0, 1]")  # share of each outer batch that carries δ (at least one clip)


def implicit_hypergradient(inner: torch.Tensor, params: Sequence[torch.Tensor],
                           fp_map: Callable[[torch.Tensor], torch.Tensor],
                           outer_loss: Callable[[torch.Tensor], torch.Tensor], K: int) -> list[torch.Tensor]:
    """d L_out(δ*(θ), θ) / dθ at a (near) fixed point δ* = Φ(δ*, θ), by ``K`` fixed-point iterations.

    ``fp_map`` must build its graph with ``create_graph=True`` so that it can be
    differentiated w.r.t. both δ and θ. Unused parameters get zero gradients.
    """
    inner = inner.detach().requires_grad_(True)
    loss = outer_loss(inner)
    g_inner, *g_params = torch.autograd.grad(loss, [inner, *params], allow_unused=True)
    mapped = fp_map(inner)
    v = torch.zeros_like(inner)
    for _ in range(K):
        (jv,) = torch.autograd.grad(mapped, inner, grad_outputs=v, retain_graph=True)
        v = jv + g_inner
    g_map = torch.autograd.grad(mapped, params, grad_outputs=v, allow_unused=True)
    return [(a if a is not None else torch.zeros_like(p)) + (b if b is not None else torch.zeros_like(p))
            for a, b, p in zip(g_params, g_map, params)]


class IBAU(Defense):
    name = "ibau"
    Config = IBAUConfig

    def __init__(self, config: IBAUConfig, seed: int = 0):
        if config.epochs < 1 or config.K < 1 or not 0 < config.portion <= 1 or config.radius <= 0:
            raise ValueError("I-BAU needs epochs >= 1, K >= 1, 0 < portion <= 1 and radius > 0")
        if config.pert_steps is not None and config.pert_steps < 1:
            raise ValueError(f"I-BAU pert_steps must be >= 1 or None (one pass), got {config.pert_steps}")
        super().__init__(config, seed)
        self.report: dict = {}

    def _fit_perturbation(self, model: nn.Module, clean: CleanData, scale: float,
                          gen: torch.Generator) -> torch.Tensor:
        """A universal u (input x + scale·u) that pushes clean clips away from the model's own
        predictions: ``pert_steps`` SGD steps over the clean batches, then the L2 projection."""
        c = self.config
        device = model_device(model)
        delta = torch.zeros_like(clean.features[:1], device=device, requires_grad=True)
        opt = torch.optim.SGD([delta], lr=c.pert_lr)
        order = list(batches(len(clean), c.batch_size, gen))
        for step in range(c.pert_steps or len(order)):
            x = clean.features[order[step % len(order)]].to(device)
            with torch.no_grad():
                own = model(x).argmax(1)
            loss = -F.cross_entropy(model(x + scale * delta), own) + c.reg * delta.pow(2).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            delta *= min(1.0, c.radius / (float(delta.norm()) + 1e-12))
        return delta.detach()

    def defend(self, model: nn.Module, clean: CleanData, progress: bool = True) -> nn.Module:
        self.check(model)
        c = self.config
        torch.manual_seed(self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        model.eval()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=c.lr)
        device = model_device(model)
        x0, y0 = clean.features[: c.batch_size].to(device), clean.labels[: c.batch_size].to(device)
        scale = float(clean.features.std()) if len(clean) > 1 else 1.0  # standardised units of δ

        def fp_map(delta):  # Φ(δ, θ): one ascent step on the inner objective (first batch, true labels)
            inner = -F.cross_entropy(model(x0 + scale * delta), y0) + c.reg * delta.pow(2).sum()
            (g,) = torch.autograd.grad(inner, delta, create_graph=True)
            return delta - c.inner_lr * g

        norms = []
        for _ in tqdm(range(c.epochs), desc="I-BAU rounds", disable=not progress):
            delta = self._fit_perturbation(model, clean, scale, gen)
            norms.append(float(delta.norm()))
            for idx in batches(len(clean), c.batch_size, gen):
                x, y = clean.features[idx].to(device), clean.labels[idx].to(device)
                n_pert = max(1, int(len(idx) * c.portion))
                carry = torch.zeros(len(idx), *([1] * (x.dim() - 1)))
                carry[torch.randperm(len(idx), generator=gen)[:n_pert]] = 1.0  # drawn on the CPU generator
                carry = carry.to(device)

                def outer_loss(d, x=x, y=y, carry=carry):
                    return F.cross_entropy(model(x + carry * scale * d), y)

                grads = implicit_hypergradient(delta, params, fp_map, outer_loss, c.K)
                opt.zero_grad(set_to_none=True)
                for p, g in zip(params, grads):
                    p.grad = g.detach()
                opt.step()
        self.report = {"perturbation_norms": norms, "input_scale": scale}
        return model.eval()
