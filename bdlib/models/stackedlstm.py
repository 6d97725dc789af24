"""StackedLSTM, the GN-FT authors' ``RNN`` (quantum-bitss/Audio-Backdoor-Attack,
``utils/models.py`` class ``RNN``, lines 231-257 at commit 774e5aff; built as
``RNN(num_classes, n_mfcc)`` in ``badnets.py`` ``load_model``).

A 3-layer LSTM of 768 units reads the frames (coefficients as features); the last frame's
output goes through FC classes. Parameters at 101×40, 10 classes: 11,945,482.

It has no convolution, normalisation or feature map, so Fine-Pruning's ``last_conv``
option, NAD, ANP, CLP and TSBD do not apply; Fine-Pruning's default (the classifier's
768 inputs) and the fine-tuning defenses do. Deviations: the explicit zero initial state
is the LSTM default; the input size comes from ``input_shape``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .recurrent import LSTM


class StackedLSTM(nn.Module):
    # the parts defenses use (bdlib.models.contract.DefendableModel)
    last_conv = None
    last_conv_norm = None
    attention_layers = ()
    norm_layers = ()
    conv_norm_pairs = ()
    classifier = "fc"
    #: the authors' width and depth; class attributes so tests can build a narrow copy
    HIDDEN, LAYERS = 768, 3

    def __init__(self, input_shape: tuple[int, int] = (101, 40), num_classes: int = 10):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.lstm = LSTM(self.input_shape[1], self.HIDDEN, num_layers=self.LAYERS, batch_first=True)
        self.fc = nn.Linear(self.HIDDEN, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x.squeeze(1))  # (N, frames, 768)
        return self.fc(out[:, -1])
