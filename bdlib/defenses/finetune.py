"""The fine-tuning loop shared by FT, GN-FT and the fine-tuning stage of other defenses.

A defense supplies ``grad_fn(model, x, y) -> (loss, grads)``; the loop owns batching,
seeding, the optimiser step and the progress bar, so the defenses differ only in how
they compute the update direction.

Device: the model's. The clean data stays on the CPU and each batch is moved to the model
(``grad_fn`` receives it there); the shuffling generator stays on the CPU, so batches are
drawn in the same order on every device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm  # text bars: readable in papermill outputs too

from ..training import batches
from ..registry import Checked, knob
from .base import CleanData, model_device, sgd

GradFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[float, Sequence[torch.Tensor]]]


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def plain_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """∇θ CE(f(x), y) — vanilla fine-tuning."""
    loss = F.cross_entropy(model(x), y)
    return loss.item(), torch.autograd.grad(loss, trainable(model))


def finetune(model: nn.Module, clean: CleanData, *, epochs: int, batch_size: int, optimizer: torch.optim.Optimizer,
             grad_fn: GradFn = plain_gradient, scheduler=None, seed: int = 0, progress: bool = True,
             desc: str = "fine-tuning", on_epoch_end: Callable[[int, nn.Module], None] | None = None) -> list[float]:
    """Run ``epochs`` passes over the clean data; returns the mean loss per epoch.

    ``on_epoch_end(epoch, model)`` (1-based epoch) lets a study evaluate the model along the way,
    e.g. the budget ablation reads ASR/ACC at several step counts from one run; it is called
    with the model in eval mode and must not change it."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    params = trainable(model)
    device = model_device(model)
    losses = []
    bar = tqdm(range(epochs), desc=desc, disable=not progress)
    for _ in bar:
        model.train()
        total, n = 0.0, 0
        for idx in batches(len(clean), batch_size, gen):
            if len(idx) < 2:  # BatchNorm cannot train on a single clip
                continue
            loss, grads = grad_fn(model, clean.features[idx].to(device), clean.labels[idx].to(device))
            for p, g in zip(params, grads):
                p.grad = g.detach()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            total += loss * len(idx)
            n += len(idx)
        if scheduler is not None:
            scheduler.step()
        losses.append(total / max(n, 1))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if on_epoch_end is not None:
            model.eval()
            # evaluation must not shift the training RNG (the CPU's, and the GPU's dropout stream)
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                on_epoch_end(len(losses), model)
    model.eval()
    return losses


@dataclass
class FinetuneKnobs(Checked):
    """The optimiser knobs every fine-tuning defense shares (BackdoorBench's defaults:
    SGD lr 0.01, momentum 0.9, weight decay 5e-4); defense configs inherit them, and with
    them the type/range check of every field at construction (:class:`bdlib.registry.Checked`)."""

    epochs: int = knob(100, "[1, inf)")  # fine-tuning epochs (FP, TSBD: 0 allowed, no fine-tuning stage)
    batch_size: int = knob(256, "[1, inf)")
    lr: float = knob(0.01, "(0, inf)")
    momentum: float = knob(0.9, "[0, 1)")
    weight_decay: float = knob(5e-4, "[0, inf)")


def run_finetune(model: nn.Module, clean: CleanData, knobs: FinetuneKnobs, *, seed: int, progress: bool, desc: str,
                 grad_fn: GradFn = plain_gradient, cosine: bool = True, epochs: int | None = None,
                 on_epoch_end: Callable[[int, nn.Module], None] | None = None) -> list[float]:
    """:func:`finetune` with SGD built from ``knobs`` and, if ``cosine``, a cosine schedule."""
    epochs = knobs.epochs if epochs is None else epochs
    opt = sgd(model, knobs.lr, knobs.momentum, knobs.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1)) if cosine else None
    return finetune(model, clean, epochs=epochs, batch_size=knobs.batch_size, optimizer=opt, scheduler=sched,
                    grad_fn=grad_fn, seed=seed, progress=progress, desc=desc, on_epoch_end=on_epoch_end)
