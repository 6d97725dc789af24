"""Model registry: ``build_model(name, input_shape, num_classes)``.

A new architecture is one module here plus one ``MODELS.add`` line.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..registry import Registry
from .smallcnn import SmallCNN

MODELS: Registry = Registry("model")
MODELS.add("smallcnn", SmallCNN)


def build_model(name: str, input_shape: tuple[int, int], num_classes: int, seed: int | None = None) -> nn.Module:
    """A freshly initialised model; with ``seed`` its initial weights depend on nothing else.

    Why the seed: without it the initial weights come from torch's global generator, whose
    state depends on whatever ran earlier in the process (another test, a cache miss),
    and two runs of the same configuration train different models.
    """
    cls = MODELS.get(name)
    if seed is None:
        return cls(input_shape=tuple(input_shape), num_classes=num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(input_shape=tuple(input_shape), num_classes=num_classes)
