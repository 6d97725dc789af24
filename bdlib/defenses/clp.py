"""CLP: data-free channel Lipschitzness-based pruning (Zheng, Zhang, Wang, Zhao & Li,
"Data-free Backdoor Removal based on Channel Lipschitzness", ECCV 2022).

A backdoor channel must amplify a small trigger into a large output change, so its
upper bound on the channel Lipschitz constant (UCLC) is unusually large. For every
convolution followed by BatchNorm, the UCLC of output channel k is the spectral norm of
its filter scaled by the BN gain, ‖W_k‖₂·|γ_k|/σ_k; channels with UCLC above
mean + u·std of their layer are pruned (u = 3, the paper's and BackdoorBench's default).
No data is used: the clean subset is accepted only to share the interface.

Pruning zeroes the BN's affine parameters of the channel (as the reference code does). SmallCNN
places ReLU between conv and BN; the bound is then still an upper bound (ReLU is
1-Lipschitz). The pairs are the model's declared ``conv_norm_pairs`` (:mod:`bdlib.models.contract`);
a model without any is refused with ``DefenseNotApplicable`` (:meth:`CLP.check`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..models import contract
from ..registry import Checked, knob
from .base import CleanData, Defense


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, nn.Conv2d, nn.BatchNorm2d]]:
    """The model's declared (conv name, conv, BN) pairs; refuses a model that has none."""
    return contract.conv_norm_pairs(model, "CLP", "CLP bounds the Lipschitz constant of each conv→BN channel")


@torch.no_grad()
def channel_lipschitz(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
    """UCLC per output channel: σ_max(W_k) · |γ_k| / sqrt(running_var_k + eps), with the
    filter W_k laid out as (in_channels, kh·kw) as in the paper's reference code."""
    w = conv.weight.reshape(conv.out_channels, conv.in_channels, -1)
    scale = bn.weight.abs() / torch.sqrt(bn.running_var + bn.eps)
    return torch.linalg.matrix_norm(w, ord=2) * scale


@dataclass
class CLPConfig(Checked):
    u: float = knob(3.0, "[0, inf)")  # prune channels whose UCLC exceeds mean + u·std of their layer


class CLP(Defense):
    name = "clp"
    Config = CLPConfig

    def __init__(self, config: CLPConfig, seed: int = 0):
        super().__init__(config, seed)
        self.report: dict = {}

    def check(self, model: nn.Module) -> None:
        """CLP needs the model's declared ``conv_norm_pairs`` (at least one)."""
        conv_bn_pairs(model)

    def defend(self, model, clean: CleanData | None = None, progress: bool = True):
        self.check(model)
        pairs = conv_bn_pairs(model)
        pruned = {}
        with torch.no_grad():
            for name, conv, bn in pairs:
                lips = channel_lipschitz(conv, bn)
                if len(lips) < 2:  # a one-channel layer (LSTMAtt's conv2) has no outlier: its std is undefined
                    pruned[name] = []
                    continue
                idx = torch.nonzero(lips > lips.mean() + self.config.u * lips.std()).flatten()
                bn.weight[idx] = 0  # the channel's output is now exactly zero after the norm
                bn.bias[idx] = 0
                pruned[name] = idx.tolist()
        self.report = {"pruned_channels": pruned, "n_pruned": sum(len(v) for v in pruned.values())}
        return model.eval()
