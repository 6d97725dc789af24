"""FT: vanilla fine-tuning on the defender's clean subset (the baseline of every
model-level defense study; settings from BackdoorBench, Wu et al. 2022: SGD lr 0.01,
momentum 0.9, weight decay 5e-4, cosine annealing)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import CleanData, Defense, sgd
from .finetune import finetune


@dataclass
class FTConfig:
    epochs: int = 100
    batch_size: int = 256
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    cosine: bool = True


class FineTuning(Defense):
    name = "ft"
    Config = FTConfig

    def defend(self, model, clean: CleanData, progress: bool = True):
        c = self.config
        opt = sgd(model, c.lr, c.momentum, c.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(c.epochs, 1)) if c.cosine else None
        finetune(model, clean, epochs=c.epochs, batch_size=c.batch_size, optimizer=opt, scheduler=sched,
                 seed=self.seed, progress=progress, desc="FT")
        return model
