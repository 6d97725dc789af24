"""NAD: Neural Attention Distillation (Li, Lyu, Koren, Lyu, Li & Ma, ICLR 2021).

Two stages on the defender's clean subset: (1) fine-tune a copy of the backdoored model
into a *teacher*; (2) train the backdoored *student* with cross-entropy plus attention
distillation, Σ_l β_l·‖A(F_s^l) − A(F_t^l)‖², where A(F) = normalize(mean_c |F_c|^p) is
the spatial attention map of a block's output. Defaults follow BackdoorBench: teacher
5-10 epochs of SGD lr 0.01, β = 500 / 1000 / 1000 on the last three blocks, p = 2.

The distilled layers are the model's declared ``attention_layers`` (:mod:`bdlib.models.contract`;
SmallCNN: the outputs of its three conv blocks), one beta each; a model that declares none,
or a different number than there are betas, is refused with ``DefenseNotApplicable``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import contract
from ..registry import knob
from .base import CleanData, Defense
from .finetune import FinetuneKnobs, run_finetune, trainable


def attention_map(fm: torch.Tensor, p: float) -> torch.Tensor:
    """A(F) = L2-normalised spatial map of mean_c |F_c|^p, one row per example."""
    return F.normalize(fm.abs().pow(p).mean(1).flatten(1), dim=1)


class _Taps:
    """Forward hooks that record the outputs of named sub-modules."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]):
        self.out: dict[str, torch.Tensor] = {}
        self.handles = [model.get_submodule(n).register_forward_hook(self._keep(n)) for n in names]

    def _keep(self, name):
        def hook(mod, inp, out):
            self.out[name] = out
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


@dataclass
class NADConfig(FinetuneKnobs):
    teacher_epochs: int = knob(10, "[1, inf)")
    betas: tuple[float, ...] = knob((500.0, 1000.0, 1000.0), "[0, inf)", nonempty=True)  # one per attention layer
    p: float = knob(2.0, "(0, inf)")  # power of the attention map


class NAD(Defense):
    name = "nad"
    Config = NADConfig

    def _layers(self, model: nn.Module) -> tuple[str, ...]:
        """The model's declared ``attention_layers``, one per beta; refuses a model that declares
        none, or a different number than there are betas."""
        layers = tuple(contract.layers(model, "attention_layers", "NAD", "NAD distils attention maps of feature maps"))
        if len(self.config.betas) != len(layers):
            raise contract.DefenseNotApplicable(
                f"NAD cannot defend {type(model).__name__} with these knobs: it got {len(self.config.betas)} betas "
                f"for {len(layers)} attention layers {layers}; pass one beta per layer (betas=...)")
        return layers

    def check(self, model: nn.Module) -> None:
        """NAD needs the model's declared ``attention_layers``, as many as its ``betas``."""
        self._layers(model)

    def defend(self, model, clean: CleanData, progress: bool = True):
        self.check(model)
        c = self.config
        layers = self._layers(model)
        teacher = copy.deepcopy(model)
        run_finetune(teacher, clean, c, epochs=c.teacher_epochs, cosine=False, seed=self.seed, progress=progress,
                     desc="NAD teacher")
        teacher.eval()
        t_taps, s_taps = _Taps(teacher, layers), _Taps(model, layers)

        def grad_fn(net, x, y):
            with torch.no_grad():
                teacher(x)
            loss = F.cross_entropy(net(x), y)
            for beta, name in zip(c.betas, layers):
                diff = attention_map(s_taps.out[name], c.p) - attention_map(t_taps.out[name], c.p)
                loss = loss + beta * diff.pow(2).mean()
            return loss.item(), torch.autograd.grad(loss, trainable(net))

        try:
            run_finetune(model, clean, c, grad_fn=grad_fn, seed=self.seed, progress=progress, desc="NAD student")
        finally:
            t_taps.close()
            s_taps.close()
        return model
