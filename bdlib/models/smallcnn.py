"""SmallCNN, the keyword-spotting CNN of the GN-FT paper (arXiv 2502.01152, Sec. 4.1).

Three conv blocks of 64-64-32 channels with 2×2 kernels, each ReLU -> BatchNorm ->
max-pool (the order of the authors' code), dropout 0.4, FC 128, dropout 0.5, FC classes.
The input is an MFCC map (N, 1, frames, coefficients); the flatten size is derived from
``input_shape`` so the same class serves 101×40 (16 kHz) and 100×40 (44.1 kHz) inputs.
Returns logits (the authors' log-softmax is folded into the cross-entropy loss).
Parameters at 101×40, 10 classes: 419,946 (the authors' ``smallcnn`` in
quantum-bitss/Audio-Backdoor-Attack ``utils/models.py``, lines 17-65 at commit 774e5aff).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class SmallCNN(nn.Module):
    # the parts defenses use (bdlib.models.contract.DefendableModel)
    last_conv = "conv3"
    last_conv_norm = "bn3"  # conv -> ReLU -> BN: zeroed with a pruned channel
    attention_layers = ("pool1", "pool2", "pool3")  # the three conv blocks' outputs (NAD)
    norm_layers = ("bn1", "bn2", "bn3")  # ANP
    conv_norm_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))  # CLP
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
        with torch.no_grad():
            n_flat = self.features(torch.zeros(1, 1, *self.input_shape)).shape[1]
        self.fc1 = nn.Linear(n_flat, 128)
        self.drop2 = nn.Dropout(0.5)
        self.fc2 = nn.Linear(128, num_classes)
        # channels-last runs ~30 % faster on CPU (oneDNN) for these small, odd-shaped maps
        self.to(memory_format=torch.channels_last)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        x = self.pool1(self.bn1(F.relu(self.conv1(x))))
        x = self.pool2(self.bn2(F.relu(self.conv2(x))))
        x = self.pool3(self.bn3(F.relu(self.conv3(x))))
        return torch.flatten(self.drop1(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop2(F.relu(self.fc1(self.features(x)))))
