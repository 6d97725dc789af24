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

Each round, as in the authors' code: (1) a fresh δ is fitted by one pass of SGD (lr 10)
over the clean batches, maximising the cross-entropy against the model's *own* predictions
(regulariser 0.001·‖δ‖²); (2) one pass of Adam over the clean batches takes hypergradient
steps on θ, with δ added to a ``portion`` of each batch (the inner loss of Φ uses the first
clean batch with its true labels, as in the original). The model stays in eval mode
(BatchNorm statistics frozen), as in the original.

Defaults are BackdoorBench's (Adam lr 1e-4, K = 5, 5 rounds, batch 100, portion 0.01).
Deviations: the number of rounds is the ``epochs`` knob, which the profile sets (100 at
the default profile: with 5 % clean data that is one batch per round, ~100 outer steps,
about what 5 rounds over a 5 % CIFAR-10 subset give); at least one clip per batch carries
δ (0.01 of a batch smaller than 100 would be none). Known weakness at small budgets: δ
gets one SGD step per clean batch per round, so with a one-batch clean subset it stays tiny
(notebook 28 measures it). I-BAU needs only gradients, so it
applies to any differentiable model, recurrent and attention models included.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from ..training import batches
from .base import CleanData, Defense


@dataclass
class IBAUConfig:
    epochs: int = 5  # unlearning rounds (original n_rounds)
    batch_size: int = 100
    lr: float = 1e-4  # outer Adam
    K: int = 5  # fixed-point iterations of the hypergradient
    inner_lr: float = 0.1  # step η of the inner map Φ
    pert_lr: float = 10.0  # SGD step of the per-round perturbation fit
    reg: float = 0.001  # weight of ‖δ‖² in the inner loss
    portion: float = 0.01  # share of each outer batch that carries δ (at least one clip)


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
        if config.epochs < 1 or config.K < 1 or not 0 < config.portion <= 1:
            raise ValueError("I-BAU needs epochs >= 1, K >= 1 and 0 < portion <= 1")
        super().__init__(config, seed)
        self.report: dict = {}

    def _fit_perturbation(self, model: nn.Module, clean: CleanData, gen: torch.Generator) -> torch.Tensor:
        """One SGD pass: a universal δ that pushes clean clips away from the model's own predictions."""
        c = self.config
        delta = torch.zeros_like(clean.features[:1], requires_grad=True)
        opt = torch.optim.SGD([delta], lr=c.pert_lr)
        for idx in batches(len(clean), c.batch_size, gen):
            x = clean.features[idx]
            with torch.no_grad():
                own = model(x).argmax(1)
            loss = -F.cross_entropy(model(x + delta), own) + c.reg * delta.pow(2).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return delta.detach()

    def defend(self, model: nn.Module, clean: CleanData, progress: bool = True) -> nn.Module:
        c = self.config
        torch.manual_seed(self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        model.eval()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=c.lr)
        x0, y0 = clean.features[: c.batch_size], clean.labels[: c.batch_size]

        def fp_map(delta):  # Φ(δ, θ): one ascent step on the inner objective (first batch, true labels)
            inner = -F.cross_entropy(model(x0 + delta), y0) + c.reg * delta.pow(2).sum()
            (g,) = torch.autograd.grad(inner, delta, create_graph=True)
            return delta - c.inner_lr * g

        norms = []
        for _ in tqdm(range(c.epochs), desc="I-BAU rounds", disable=not progress):
            delta = self._fit_perturbation(model, clean, gen)
            norms.append(float(delta.norm()))
            for idx in batches(len(clean), c.batch_size, gen):
                x, y = clean.features[idx], clean.labels[idx]
                n_pert = max(1, int(len(idx) * c.portion))
                carry = torch.zeros(len(idx), *([1] * (x.dim() - 1)))
                carry[torch.randperm(len(idx), generator=gen)[:n_pert]] = 1.0

                def outer_loss(d, x=x, y=y, carry=carry):
                    return F.cross_entropy(model(x + carry * d), y)

                grads = implicit_hypergradient(delta, params, fp_map, outer_loss, c.K)
                opt.zero_grad(set_to_none=True)
                for p, g in zip(params, grads):
                    p.grad = g.detach()
                opt.step()
        self.report = {"perturbation_norms": norms}
        return model.eval()
