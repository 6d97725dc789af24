"""FT-SAM: fine-tuning with sharpness-aware minimisation (Zhu, Wu, Wang et al., "Enhancing
Fine-Tuning Based Backdoor Defense with Sharpness-Aware Minimization", ICCV 2023).

Why it can remove a backdoor: the FT-SAM paper finds that backdoor-related neurons have
larger weight norms than clean ones (GN-FT Sec. 3.1 makes the analogous observation for
gradients); minimising the *worst* loss in a neighbourhood of the weights shrinks them
where plain fine-tuning barely moves.

Each step takes the gradient at the worst point of a ρ-ball, θ + ρ·e, the same two-pass
computation as GN-FT's approximation with α = 1, so it reuses
:func:`bdlib.defenses.gnft.approx_gradient`. The ball is **adaptive** (ASAM, Kwon et al.,
ICML 2021): e = w²·g / ‖|w|·g‖, i.e. a ball in weight-relative coordinates, which is what
makes ρ = 2 a sensible radius. Defaults follow BackdoorBench's ``defense/ft-sam.py``
(adaptive on, ρ = 2 constant, no gradient decomposition, label smoothing 0.1) with its
fine-tuning defaults (SGD lr 0.01, momentum 0.9, weight decay 5e-4, cosine schedule).

``adaptive=False`` gives plain SAM (Foret et al., ICLR 2021): an L2 ball of radius ρ in
absolute weight units; with ρ = 2 that is far outside SmallCNN's weight scale and the
earlier default-profile run collapsed the model to chance accuracy (notebook 23 keeps the
comparison).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch.nn.functional as F

from ..registry import knob
from .base import CleanData, Defense
from .finetune import FinetuneKnobs, run_finetune
from .gnft import approx_gradient


@dataclass
class FTSAMConfig(FinetuneKnobs):
    rho: float = knob(2.0, "(0, inf)")
    adaptive: bool = True  # ASAM-style weight-relative ball (BackdoorBench's default)
    label_smoothing: float = knob(0.1, "[0, 1)")


class FTSAM(Defense):
    name = "ftsam"
    Config = FTSAMConfig

    def __init__(self, config: FTSAMConfig, seed: int = 0):
        if config.rho <= 0 or not 0 <= config.label_smoothing < 1:
            raise ValueError(f"FT-SAM needs rho > 0 and label_smoothing in [0, 1), got {config}")
        super().__init__(config, seed)

    def defend(self, model, clean: CleanData, progress: bool = True):
        self.check(model)
        c = self.config
        loss = partial(F.cross_entropy, label_smoothing=c.label_smoothing)
        norm = "adaptive" if c.adaptive else "global"
        run_finetune(model, clean, c, seed=self.seed, progress=progress, desc="FT-SAM",
                     grad_fn=lambda m, x, y: approx_gradient(m, x, y, r=c.rho, alpha=1.0, norm=norm, loss_fn=loss))
        return model
