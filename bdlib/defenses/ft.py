"""FT: vanilla fine-tuning on the defender's clean subset (the baseline of every
model-level defense study; settings from BackdoorBench, Wu et al. 2022: SGD lr 0.01,
momentum 0.9, weight decay 5e-4, cosine annealing)."""
from __future__ import annotations

from dataclasses import dataclass

from .base import CleanData, Defense
from .finetune import FinetuneKnobs, run_finetune


@dataclass
class FTConfig(FinetuneKnobs):
    cosine: bool = True  # cosine-annealed learning rate


class FineTuning(Defense):
    name = "ft"
    Config = FTConfig

    def defend(self, model, clean: CleanData, progress: bool = True, on_epoch_end=None):
        """``on_epoch_end(epoch, model)``: see :func:`bdlib.defenses.finetune.finetune` (budget curves)."""
        self.check(model)
        run_finetune(model, clean, self.config, cosine=self.config.cosine, seed=self.seed, progress=progress, desc="FT",
                     on_epoch_end=on_epoch_end)
        return model
