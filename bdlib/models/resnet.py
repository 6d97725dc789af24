"""ResNet, the GN-FT authors' ``ResNet`` with ``ResidualBlock`` (quantum-bitss/Audio-Backdoor-Attack,
``utils/models.py`` lines 260-332 at commit 774e5aff; built as
``ResNet(ResidualBlock, [2, 2, 2], num_classes, 384)`` in ``badnets.py`` ``load_model``).

A CIFAR-style ResNet: 3×3 conv 16 -> BN -> ReLU, three stages of two basic blocks (16, 32,
64 channels; stride 2 at the start of stages 2 and 3, where a 3×3 conv + BN shortcut
projects), then a 1×1 conv 64 with stride (2, 1), 4×4 average pooling and FC classes.
Parameters at 101×40, 10 classes: 202,810 (the flatten is 64×3×2 = 384, the authors'
hard-coded value; here derived from ``input_shape``, minimum about 25×13).

Deviations: none in the computation (``ReLU(inplace=True)`` kept); module names and order
follow the authors', so their state dicts load.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .probe import probe_shape


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


class ResidualBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the (projected) input, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += residual
        return self.relu(out)


def _stage(c_in: int, c_out: int, blocks: int, stride: int) -> nn.Sequential:
    down = None
    if stride != 1 or c_in != c_out:
        down = nn.Sequential(conv3x3(c_in, c_out, stride), nn.BatchNorm2d(c_out))
    return nn.Sequential(ResidualBlock(c_in, c_out, stride, down),
                         *[ResidualBlock(c_out, c_out) for _ in range(1, blocks)])


class ResNet(nn.Module):
    # the parts defenses use (bdlib.models.contract.DefendableModel); conv/BN names listed in __init__
    last_conv = "conv2d"  # the 1×1 reducer; no norm follows it
    last_conv_norm = None
    attention_layers = ("layer1", "layer2", "layer3")  # the three stages' outputs (NAD, as BackdoorBench)
    classifier = "fc"
    BLOCKS = (2, 2, 2)

    def __init__(self, input_shape: tuple[int, int] = (101, 40), num_classes: int = 10):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.conv = conv3x3(1, 16)
        self.bn = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _stage(16, 16, self.BLOCKS[0], 1)
        self.layer2 = _stage(16, 32, self.BLOCKS[1], 2)
        self.layer3 = _stage(32, 64, self.BLOCKS[2], 2)
        self.conv2d = nn.Conv2d(64, 64, kernel_size=1, stride=(2, 1))
        self.avg_pool = nn.AvgPool2d(4)
        self.fc = nn.Linear(probe_shape(self.features, self.input_shape, "ResNet")[1], num_classes)
        # every BatchNorm with the convolution it follows (stem, blocks, shortcut projections)
        self.conv_norm_pairs = _conv_norm_pairs(self)
        self.norm_layers = tuple(norm for _, norm in self.conv_norm_pairs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn(self.conv(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return torch.flatten(self.avg_pool(self.conv2d(out)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _conv_norm_pairs(model: nn.Module) -> tuple[tuple[str, str], ...]:
    """(conv, bn) names: in this architecture each BatchNorm directly follows the conv defined before it."""
    pairs, conv = [], None
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            conv = name
        elif isinstance(m, nn.BatchNorm2d):
            pairs.append((conv, name))
    return tuple(pairs)
