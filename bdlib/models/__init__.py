"""Model registry: ``build_model(name, input_shape, num_classes)``.

A new architecture is one module here plus one ``MODELS.add`` line.
"""
from __future__ import annotations

import torch.nn as nn

from ..registry import Registry
from .smallcnn import SmallCNN

MODELS: Registry = Registry("model")
MODELS.add("smallcnn", SmallCNN)


def build_model(name: str, input_shape: tuple[int, int], num_classes: int) -> nn.Module:
    return MODELS.get(name)(input_shape=tuple(input_shape), num_classes=num_classes)
