"""An LSTM that GN-FT's exact form can differentiate in forward mode.

Why: GN-FT's exact gradient (``bdlib.defenses.gnft.exact_gradient``) needs H·u, computed by
forward-over-reverse (``torch.autograd.forward_ad``). PyTorch's fused LSTM kernels have no
forward-mode derivative — on the CPU oneDNN's ``mkldnn_rnn_layer`` raises "Trying to use forward
AD with mkldnn_rnn_layer that does not support it" (torch 2.9.1), and cuDNN's RNN has none either
— so the exact form failed on every recurrent model. When the weights carry a forward-mode
tangent, this LSTM runs on PyTorch's unfused kernels, which have one (same H·u as
reverse-over-reverse, ``tests/test_models_contract.py``); otherwise it is ``nn.LSTM`` unchanged
(same parameters, state-dict keys and fused kernels)."""
from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn as nn


class LSTM(nn.LSTM):
    def forward(self, *args, **kwargs):
        if fwAD.unpack_dual(self.weight_ih_l0).tangent is None:
            return super().forward(*args, **kwargs)
        keep = dict(deterministic=None, allow_tf32=None, fp32_precision=None)  # only switch the fused kernels off
        with torch.backends.mkldnn.flags(enabled=False, **keep), \
                torch.backends.cudnn.flags(enabled=False, benchmark=None, benchmark_limit=None, **keep):
            return super().forward(*args, **kwargs)
