"""LSTMAtt, the GN-FT authors' ``lstmwithattention`` (quantum-bitss/Audio-Backdoor-Attack,
``utils/models.py`` class ``lstmwithattention``, lines 180-228 at commit 774e5aff; built as
``lstmwithattention(num_classes, n_mfcc, 101)`` in ``badnets.py`` ``load_model``) — the
attention RNN keyword spotter of de Andrade et al. (arXiv 1808.08929).

A (5, 1) conv front-end along time (1 -> 10 -> 1 channels, each ReLU -> BatchNorm), then
two bidirectional LSTMs of 64 units over the frames (coefficients as features). The last
frame's output (128) gives a query (FC 128, ReLU) and, through FC 128 + softmax, weights
over the 128 LSTM features; their weighted sum per frame is a vector of one value per
frame, followed by FC 64 -> ReLU -> dropout 0.5 -> FC 32 -> ReLU -> FC classes. Parameters
at 101×40, 10 classes: 195,695.

Deviations: none in the computation; the sizes the authors pass by hand (``time_len`` =
coefficients, ``seq_len`` = frames) come from ``input_shape``. The conv front-end is a
single-channel filter bank, so Fine-Pruning's ``last_conv`` option has one unit to prune
(in effect nothing), and NAD distils two maps (pass two ``betas``).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .recurrent import LSTM


class LSTMAtt(nn.Module):
    # the parts defenses use (bdlib.models.contract.DefendableModel)
    last_conv = "conv2"
    last_conv_norm = "batchnorm2"
    attention_layers = ("batchnorm1", "batchnorm2")  # the two conv stages' outputs (NAD)
    norm_layers = ("batchnorm1", "batchnorm2")
    conv_norm_pairs = (("conv1", "batchnorm1"), ("conv2", "batchnorm2"))
    classifier = "output"

    def __init__(self, input_shape: tuple[int, int] = (101, 40), num_classes: int = 10):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        frames, coeffs = self.input_shape
        self.conv1 = nn.Conv2d(1, 10, kernel_size=(5, 1), padding="same")
        self.batchnorm1 = nn.BatchNorm2d(10)
        self.conv2 = nn.Conv2d(10, 1, kernel_size=(5, 1), padding="same")
        self.batchnorm2 = nn.BatchNorm2d(1)
        self.rnn1 = LSTM(coeffs, 64, bidirectional=True, batch_first=True)
        self.rnn2 = LSTM(128, 64, bidirectional=True, batch_first=True)
        self.dense1 = nn.Linear(128, 128)
        self.attention = nn.Linear(128, 128)
        self.dense2 = nn.Linear(frames, 64)
        self.dropout = nn.Dropout(0.5)
        self.dense3 = nn.Linear(64, 32)
        self.output = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.batchnorm1(torch.relu(self.conv1(x)))
        x = self.batchnorm2(torch.relu(self.conv2(x))).squeeze(1)  # (N, frames, coeffs)
        x, _ = self.rnn1(x)
        x, _ = self.rnn2(x)  # (N, frames, 128)
        query = torch.relu(self.dense1(x[:, -1]))
        weights = torch.softmax(self.attention(query), dim=1)  # over the 128 features, as the authors
        pooled = torch.einsum("ik,ijk->ij", weights, x)  # (N, frames)
        x = self.dropout(torch.relu(self.dense2(pooled)))
        return self.output(torch.relu(self.dense3(x)))
