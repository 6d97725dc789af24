"""The defense interface: ``check(model)`` and ``defend(model, clean) -> model``.

Model-level defenses (GN-FT paper, Sec. 2) start from a trained, possibly backdoored
model and a small set of clean, correctly labelled clips held by the defender; they
return a repaired model of the same architecture. Every defense takes a dataclass config
whose unknown keys are rejected by name (see ``bdlib.registry.build_config``).

Devices: a defense runs wherever the model it is given lives. The clean data stays on the
CPU; each batch is moved to :func:`model_device` (the shared loop in :mod:`.finetune` does
it), and every tensor a defense creates (masks, perturbations, noise) is created there.

Applicability: whether a defense can act on a model at all is declared by
:meth:`Defense.check` — the parts of the network it works on (:mod:`bdlib.models.contract`),
looked up without data — so a study can tell "not applicable" before anything is trained
(:func:`bdlib.study.refusal`), and ``defend`` refuses with the same message as its first step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn

from ..device import model_device  # noqa: F401 (the defenses import it from here)


@dataclass
class CleanData:
    """The defender's clean subset as features + labels."""

    features: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self):
        self.labels = torch.as_tensor(self.labels, dtype=torch.long)
        if len(self.features) == 0:
            raise ValueError("the defense got zero clean samples; raise clean_fraction or give it clean data")
        if len(self.features) != len(self.labels):
            raise ValueError(f"{len(self.features)} clean features but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)


def clean_subset_indices(n_train: int, fraction: float, seed: int) -> np.ndarray:
    """The defender's clean clips: ``round(fraction × n_train)`` training indices (sorted)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"clean_fraction must be in (0, 1], got {fraction}")
    n = int(round(fraction * n_train))
    if n == 0:
        raise ValueError(f"clean_fraction {fraction} of {n_train} training clips is zero clean samples")
    return np.sort(np.random.default_rng([seed, 7]).choice(n_train, size=n, replace=False))


class Defense:
    name: ClassVar[str] = "defense"
    Config: ClassVar[type]

    def __init__(self, config, seed: int = 0):
        self.config = config
        self.seed = seed

    def check(self, model: nn.Module) -> None:
        """Refuse ``model`` if this defense, with its config, cannot act on it.

        Raises :class:`~bdlib.models.contract.DefenseNotApplicable` naming the defense, the
        model class and the part it lacks (built with the helpers of
        :mod:`bdlib.models.contract`); returns None if the defense can act on it. The default
        accepts every model: a defense that only fine-tunes needs nothing but parameters. A
        defense that works on named parts (a layer to prune, feature maps to distil, BatchNorm
        channels to mask) overrides it with exactly the part lookups its ``defend`` makes,
        with the knobs that choose them.

        Why declared rather than found out by running ``defend``: a study decides "not
        applicable" for every cell before anything is trained, on an untrained model of the
        architecture (:func:`bdlib.study.refusal`), and it must get the same answer ``defend``
        would. So ``check`` is cheap and pure — no data, no training, no forward pass, no RNG
        draw, and the model is not modified — and every ``defend`` calls it first, so a
        refusal comes before anything else happens and reads the same in both places.
        """

    def defend(self, model: nn.Module, clean: CleanData) -> nn.Module:
        """The repaired model (``model`` itself, changed in place). Calls :meth:`check` first."""
        raise NotImplementedError


def sgd(model: nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 0.0) -> torch.optim.SGD:
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=momentum,
                           weight_decay=weight_decay)
