"""FT-SAM: fine-tuning with sharpness-aware minimisation (Zhu, Wu, Wang et al., "Enhancing
Fine-Tuning Based Backdoor Defense with Sharpness-Aware Minimization", ICCV 2023).

SAM (Foret et al., ICLR 2021) takes the gradient at the worst point of a ρ-ball,
θ + ρ·g/‖g‖ — the same two-pass computation as GN-FT's approximation with α = 1 and one
global norm, so it reuses :func:`bdlib.defenses.gnft.approx_gradient`. Defaults: ρ = 2,
label smoothing 0.1, SGD lr 0.01, momentum 0.9, weight decay 5e-4, cosine schedule.

Deviation, measured: this is *plain* SAM. ρ = 2 is a value for an adaptive (ASAM-style,
weight-scaled) perturbation; as a plain L2 radius it is far outside SmallCNN's weight scale
and the default-profile run collapses the model to chance accuracy (notebook 23). An
adaptive perturbation, or ρ tuned for plain SAM, is still to be done.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch.nn.functional as F

from .base import CleanData, Defense
from .finetune import FinetuneKnobs, run_finetune
from .gnft import approx_gradient


@dataclass
class FTSAMConfig(FinetuneKnobs):
    rho: float = 2.0
    label_smoothing: float = 0.1


class FTSAM(Defense):
    name = "ftsam"
    Config = FTSAMConfig

    def __init__(self, config: FTSAMConfig, seed: int = 0):
        if config.rho <= 0 or not 0 <= config.label_smoothing < 1:
            raise ValueError(f"FT-SAM needs rho > 0 and label_smoothing in [0, 1), got {config}")
        super().__init__(config, seed)

    def defend(self, model, clean: CleanData, progress: bool = True):
        c = self.config
        loss = partial(F.cross_entropy, label_smoothing=c.label_smoothing)
        run_finetune(model, clean, c, seed=self.seed, progress=progress, desc="FT-SAM",
                     grad_fn=lambda m, x, y: approx_gradient(m, x, y, r=c.rho, alpha=1.0, norm="global", loss_fn=loss))
        return model
