"""SmallLSTM, the GN-FT authors' ``smalllstm`` (quantum-bitss/Audio-Backdoor-Attack,
``utils/models.py`` class ``smalllstm``, lines 121-178 at commit 774e5aff; built as
``smalllstm(num_classes, 128)`` in ``badnets.py`` ``load_model``).

SmallCNN's three conv blocks (64-64-32 channels, 2×2 kernels, ReLU -> BatchNorm -> max-pool,
dropout 0.4), then the (N, 32, H, W) map is read as a sequence of H steps of W·32 features
(24 steps of 128 at 101×40) by a 2-layer LSTM of 128 units; the last step's output goes
through FC classes. Parameters at 101×40, 10 classes: 290,794.

Deviations: returns logits (the authors' log-softmax is folded into the cross-entropy);
the authors' ``fc1`` (224 -> 128) and ``drop2`` are created but never used in their
forward, so they are left out — an unused parameter gets no gradient, which breaks the
defenses that differentiate with respect to every parameter; the explicit zero initial
state (``h0``, ``c0``) is the LSTM default. The LSTM's input size is derived from
``input_shape`` (the authors pass 128 for 101×40, 32 for FlowMur's 32×13).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .probe import probe_shape
from .recurrent import LSTM


class SmallLSTM(nn.Module):
    # the parts defenses use (bdlib.models.contract.DefendableModel)
    last_conv = "conv3"
    last_conv_norm = "bn3"  # conv -> ReLU -> BN, as in SmallCNN
    attention_layers = ("pool1", "pool2", "pool3")
    norm_layers = ("bn1", "bn2", "bn3")
    conv_norm_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))
    classifier = "fc2"

    def __init__(self, input_shape: tuple[int, int] = (101, 40), num_classes: int = 10):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(1, 64, kernel_size=2)
        self.bn1 = nn.BatchNorm2d(64)
        self.pool1 = nn.MaxPool2d(kernel_size=(1, 3))
        self.conv2 = nn.Conv2d(64, 64, kernel_size=2)
        self.bn2 = nn.BatchNorm2d(64)
        self.pool2 = nn.MaxPool2d(kernel_size=2, padding=1)
        self.conv3 = nn.Conv2d(64, 32, kernel_size=2)
        self.bn3 = nn.BatchNorm2d(32)
        self.pool3 = nn.MaxPool2d(kernel_size=2, padding=(0, 1))
        self.drop1 = nn.Dropout(0.4)
        _, c, _, w = probe_shape(self.conv_blocks, self.input_shape, "SmallLSTM")
        self.rnn = LSTM(w * c, 128, num_layers=2, batch_first=True)
        self.fc2 = nn.Linear(128, num_classes)

    def conv_blocks(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.bn1(F.relu(self.conv1(x))))
        x = self.pool2(self.bn2(F.relu(self.conv2(x))))
        return self.drop1(self.pool3(self.bn3(F.relu(self.conv3(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_blocks(x)
        n, c, h, w = x.shape
        seq, _ = self.rnn(x.permute(0, 2, 3, 1).reshape(n, h, w * c))  # H steps of (W, C) features
        return self.fc2(seq[:, -1])
