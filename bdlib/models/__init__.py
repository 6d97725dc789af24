"""Model registry: ``build_model(name, input_shape, num_classes)``.

A new architecture is one module here plus one ``MODELS.add`` line; it declares the parts
defenses use (:class:`bdlib.models.contract.DefendableModel`). The six are the GN-FT
authors' (quantum-bitss/Audio-Backdoor-Attack, ``utils/models.py``).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..registry import Registry
from .largecnn import LargeCNN
from .lstmatt import LSTMAtt
from .resnet import ResNet
from .smallcnn import SmallCNN
from .smalllstm import SmallLSTM
from .stackedlstm import StackedLSTM

MODELS: Registry = Registry("model")
MODELS.add("smallcnn", SmallCNN)
MODELS.add("largecnn", LargeCNN)
MODELS.add("smalllstm", SmallLSTM)
MODELS.add("lstmatt", LSTMAtt)
MODELS.add("rnn", StackedLSTM)
MODELS.add("resnet", ResNet)


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
