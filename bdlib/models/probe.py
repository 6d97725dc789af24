"""Sizes that depend on the input map, found by one dummy forward pass.

Why: the authors hard-code the flatten size per dataset (3072 / 12288 / 384 for 101×40
maps); deriving it from ``input_shape`` lets one class serve every input, and an input
too small for a model's pooling fails here with a message naming the model and the shape.
"""
from __future__ import annotations

from typing import Callable

import torch


def probe_shape(stage: Callable[[torch.Tensor], torch.Tensor], input_shape: tuple[int, int],
                model: str) -> torch.Size:
    """Output shape of ``stage`` on one all-zero map (1, 1, *input_shape)."""
    with torch.no_grad():
        try:
            return stage(torch.zeros(1, 1, *input_shape)).shape
        except RuntimeError as err:
            raise ValueError(f"{model} cannot take {tuple(input_shape)} maps (frames, coefficients): {err}") from None
