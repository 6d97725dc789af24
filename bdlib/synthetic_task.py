"""A synthetic, separable task on feature maps, for checking and timing defenses in seconds.

Why: whether a defense breaks a *working* model, and what it costs, should not need the
speech dataset or a trained victim. Each class is one fixed random template (the same for
every call, so a training and a test set share them) plus Gaussian noise; SmallCNN learns
it in a few dozen full-batch steps. Used by ``tests/test_defenses.py`` and
``benchmarks/defense_cost.py``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .defenses.base import CleanData


def template_task(n: int, shape: tuple[int, int], classes: int, seed: int, scale: float = 1.0,
                  noise: float = 0.5) -> CleanData:
    """``n`` maps (N, 1, *shape), labels cycling over ``classes``: ``scale``·template + ``noise``·N(0, 1)."""
    templates = scale * torch.randn(classes, 1, *shape, generator=torch.Generator().manual_seed(0))
    y = torch.arange(n) % classes
    return CleanData(templates[y] + noise * torch.randn(n, 1, *shape, generator=torch.Generator().manual_seed(seed)), y)


def fit(net: nn.Module, data: CleanData, steps: int, lr: float = 1e-3) -> nn.Module:
    """``steps`` full-batch Adam steps of cross-entropy; returns ``net`` in eval mode."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(net(data.features), data.labels).backward()
        opt.step()
    return net.eval()
