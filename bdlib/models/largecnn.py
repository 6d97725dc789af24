"""LargeCNN, the GN-FT authors' ``largecnn`` (quantum-bitss/Audio-Backdoor-Attack,
``utils/models.py`` class ``largecnn``, lines 67-119 at commit 774e5aff; built as
``largecnn(num_classes, 12288)`` in ``badnets.py`` ``load_model``). It follows the
"trojaning attack" speech model (Liu et al., NDSS 2018): an AlexNet-like stack.

conv 3×3 96 -> max-pool 2 -> conv 3×3 256 -> max-pool 2 -> conv 3×3 384 -> ReLU -> conv 384
-> ReLU -> conv 256 -> ReLU -> max-pool 3 stride 2 -> FC 256 -> ReLU -> dropout 0.5 -> FC 128
-> ReLU -> dropout 0.5 -> FC classes. As in the authors' code the first two convolutions
have **no** activation, and there is no normalisation layer anywhere (so ANP and CLP do not
apply). Parameters at 101×40, 10 classes: 6,500,170 (the flatten is 256×12×4 = 12288,
the authors' hard-coded value; here it is derived from ``input_shape``, minimum 12×12).
Deviation: returns logits (the authors' log-softmax is folded into the cross-entropy).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .probe import probe_shape


class LargeCNN(nn.Module):
    # the parts defenses use (bdlib.models.contract.DefendableModel)
    last_conv = "conv5"
    last_conv_norm = None
    attention_layers = ("pool1", "pool2", "pool3")  # the three conv stages' outputs (NAD)
    norm_layers = ()
    conv_norm_pairs = ()
    classifier = "fc3"
    #: output channels of conv1..conv5 (the authors'); a class attribute so tests can build a narrow copy
    CHANNELS = (96, 256, 384, 384, 256)

    def __init__(self, input_shape: tuple[int, int] = (101, 40), num_classes: int = 10):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        c1, c2, c3, c4, c5 = self.CHANNELS
        self.conv1 = nn.Conv2d(1, c1, kernel_size=3, padding=1)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=3, padding=1)
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(c2, c3, kernel_size=3, padding=1)
        self.conv4 = nn.Conv2d(c3, c4, kernel_size=3, padding=1)
        self.conv5 = nn.Conv2d(c4, c5, kernel_size=3, padding=1)
        self.pool3 = nn.MaxPool2d(kernel_size=3, stride=2)
        n_flat = probe_shape(self.features, self.input_shape, "LargeCNN")[1]
        self.fc1 = nn.Linear(n_flat, 256)
        self.dropout1 = nn.Dropout(0.5)
        self.fc2 = nn.Linear(256, 128)
        self.dropout2 = nn.Dropout(0.5)
        self.fc3 = nn.Linear(128, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        x = F.relu(self.conv5(F.relu(self.conv4(F.relu(self.conv3(x))))))
        return torch.flatten(self.pool3(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout1(F.relu(self.fc1(self.features(x))))
        return self.fc3(self.dropout2(F.relu(self.fc2(x))))
