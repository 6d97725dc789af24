"""GN-FT: gradient-norm-regularised fine-tuning (Zhou, Lin, Liu, ICASSP 2025, arXiv 2502.01152).

Observation (paper Sec. 3.1): on clean data, neurons that carry the backdoor have larger
gradients than clean neurons, so a fine-tuning objective that penalises the gradient norm

    L_GN(θ) = L(θ) + λ · ‖∇θ L(θ)‖                                      (paper Eq. 3)

pushes the model out of the sharp region the backdoor lives in, while L keeps clean
accuracy. Two ways to take its gradient:

* ``exact`` — the gradient of Eq. 3 itself, g + λ·H·u with g = ∇L and u = ∂penalty/∂g
  (g_i/‖g_i‖ per tensor, g/‖g‖ global; holding u fixed is exact, as ∇‖g‖ = H·g/‖g‖).
  g comes from one ordinary forward-backward (which updates BatchNorm once, as FT does);
  H·u from a forward-over-reverse pass (``torch.autograd.forward_ad``: the backward pass
  carries the tangent u) on the same batch and dropout mask. Measured (SmallCNN, batch 80,
  a shared 2-core CPU under load; ``benchmarks/gnft_cost.py``): ~6–7× an FT step, against
  ~12–13× for double backpropagation through L + λ‖g‖ (kept as the reference,
  ``EXACT_GRADIENTS["double_backward"]``), at about twice its peak memory (~4 GB vs ~2 GB
  above the model at batch 80). BatchNorm's second-order formula dominates either way.
* ``approx`` — the first-order form of the authors' implementation (their ``ft_reg.py``):
  g1 = ∇L(θ);  g2 = ∇L(θ + r·g1/‖g1‖) on the same batch;  update (1−α)·g1 + α·g2.
  Since g2 ≈ g1 + r·H·g1/‖g1‖ and ∇‖g‖ = H·g/‖g‖, this equals ∇L + α·r·∇‖g‖, i.e. the
  exact gradient with λ = α·r, at the cost of two ordinary forward-backward passes.

``norm="per_tensor"`` normalises each parameter tensor separately (as the authors do),
which corresponds to the penalty λ·Σ_i ‖∇θ_i L‖; ``norm="global"`` uses one norm over all
parameters, i.e. λ·‖∇θ L‖. Defaults (authors' code): r = 0.05, α = 0.7, SGD lr 1e-3,
momentum 0.9, batch 256, 5 % clean data.

Implementation notes: the perturbation is applied in place and θ copied back (no deepcopy
per step; subtracting the step again would leave rounding error, and GN-FT with α = 0 would
not equal FT at its optimiser bit for bit); both passes see the same dropout mask (the RNG
state is replayed) and BatchNorm running statistics are updated by the clean pass only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch.func import functional_call

from ..device import rng_state, set_rng_state
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
    rng = rng_state(x.device)  # the CPU's and, on a GPU, its dropout generator
    loss1 = loss_fn(model(x), y)
    g1 = torch.autograd.grad(loss1, params)
    buffers = [b.clone() for b in _bn_buffers(model)]
    saved = [p.detach().clone() for p in params]  # restored by copy: (θ + s) − s is not θ in floating point
    with torch.no_grad():
        steps = [r * d for d in _directions(g1, norm, params)]
        for p, s in zip(params, steps):
            p.add_(s)
    try:
        set_rng_state(rng, x.device)  # same dropout mask as the first pass
        g2 = torch.autograd.grad(loss_fn(model(x), y), params)
    finally:
        with torch.no_grad():
            for p, theta in zip(params, saved):
                p.copy_(theta)
            for b, kept in zip(_bn_buffers(model), buffers):
                b.copy_(kept)
    return loss1.item(), [(1 - alpha) * a + alpha * b for a, b in zip(g1, g2)]


def _penalty_direction(grads, norm: str) -> list[torch.Tensor]:
    """u = ∂penalty/∂g, detached: g_i/‖g_i‖ per tensor (penalty Σ_i ‖g_i‖) or g/‖g‖ (penalty ‖g‖).

    Holding u constant is exact: ∇θ‖g‖ = (∂g/∂θ)ᵀ·g/‖g‖ = H·u, so ∇L_GN = g + λ·H·u."""
    check_choice(norm, NORMS, "GN-FT norm")
    return _directions([g.detach() for g in grads], norm)


def exact_gradient_double_backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lam: float,
                                   norm: str = "per_tensor"):
    """(loss, ∇θ [L + λ·penalty]) by differentiating the whole penalty graph — the reference.

    Slow on CPU (~10× FT at batch 80): most of the time is BatchNorm's double-backward formula
    (many channels-last reductions), which the reverse-over-reverse HVP below shares."""
    check_choice(norm, NORMS, "GN-FT norm")
    params = trainable(model)
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    if norm == "per_tensor":
        penalty = sum(g.norm() for g in grads)
    else:
        penalty = torch.sqrt(sum((g * g).sum() for g in grads))
    return loss.item(), torch.autograd.grad(loss + lam * penalty, params)


def exact_gradient_reverse_hvp(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lam: float,
                               norm: str = "per_tensor"):
    """g + λ·H·u, H·u by reverse-over-reverse: one backward of g along the detached λ·u (no graph
    through the norms; otherwise the same double backward as the reference)."""
    params = trainable(model)
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    u = _penalty_direction(grads, norm)
    live = [(g, lam * v) for g, v in zip(grads, u) if g.requires_grad]
    hu = torch.autograd.grad([g for g, _ in live], params, grad_outputs=[v for _, v in live],
                             allow_unused=True, materialize_grads=True)
    return loss.item(), [g.detach() + h for g, h in zip(grads, hu)]


def _hvp_forward_over_reverse(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                              named: list[tuple[str, nn.Parameter]], u: list[torch.Tensor]) -> list[torch.Tensor]:
    """H·u as the forward-mode derivative, along u, of an ordinary backward pass (Pearlmutter's
    R-operator): parameters become dual tensors with tangent u, the backward pass carries the
    tangents, and the tangent of ∇θL is H·u. The pass runs on copies of the buffers, so BatchNorm's
    running statistics are not updated a second time."""
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    with fwAD.dual_level():
        duals = {n: fwAD.make_dual(p.detach(), v).requires_grad_() for (n, p), v in zip(named, u)}
        loss = F.cross_entropy(functional_call(model, (duals, buffers), (x,)), y)
        grads = torch.autograd.grad(loss, list(duals.values()), allow_unused=True, materialize_grads=True)
        tangents = [fwAD.unpack_dual(g).tangent for g in grads]
    return [torch.zeros_like(p) if t is None else t for (_, p), t in zip(named, tangents)]


def exact_gradient_forward_hvp(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lam: float,
                               norm: str = "per_tensor"):
    """g + λ·H·u with g from an ordinary forward-backward (which updates BatchNorm once, as FT
    does) and H·u by forward-over-reverse on the same batch and dropout mask (the RNG is replayed).

    ``torch.func.jvp(torch.func.grad(...))`` would compute the same H·u, but under torch.func
    transforms dropout draws a different mask from the same RNG state (checked with torch 2.9),
    so the HVP would belong to another objective than g; ``torch.autograd.forward_ad`` runs the
    model's own dropout kernel."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    rng = rng_state(x.device)
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, [p for _, p in named])
    u = _penalty_direction(grads, norm)
    set_rng_state(rng, x.device)  # same dropout mask as the first pass
    hu = _hvp_forward_over_reverse(model, x, y, named, u)
    return loss.item(), [g + lam * h for g, h in zip(grads, hu)]


#: the exact-gradient implementations, all ∇θ[L + λ·penalty] on one batch; ``benchmarks/gnft_cost.py``
#: times each, ``tests/test_gnft_exact.py`` checks each against the reference and finite differences
EXACT_GRADIENTS = {
    "double_backward": exact_gradient_double_backward,
    "reverse_hvp": exact_gradient_reverse_hvp,
    "forward_hvp": exact_gradient_forward_hvp,
}
EXACT_DEFAULT = "forward_hvp"


def exact_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lam: float, norm: str = "per_tensor"):
    """(loss, ∇θ [L + λ·penalty]) — what ``mode="exact"`` uses: :func:`exact_gradient_forward_hvp`,
    the fastest of :data:`EXACT_GRADIENTS` (``benchmarks/gnft_cost.py``)."""
    return EXACT_GRADIENTS[EXACT_DEFAULT](model, x, y, lam, norm)


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

    def defend(self, model, clean: CleanData, progress: bool = True, on_epoch_end=None):
        """``on_epoch_end(epoch, model)``: see :func:`bdlib.defenses.finetune.finetune` (budget curves)."""
        self.check(model)
        run_finetune(model, clean, self.config, grad_fn=self.grad_fn(), cosine=False, seed=self.seed,
                     progress=progress, desc=f"GN-FT ({self.config.mode})", on_epoch_end=on_epoch_end)
        return model
