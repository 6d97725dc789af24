"""MFCC front end (torchaudio), computed in batches.

Paper setting (GN-FT, Sec. 4.1, and the authors' code): 16 kHz, 40 coefficients,
n_fft 400, hop 160, torchaudio's default 128 mel bands -> 101 frames × 40 coefficients
per 1 s clip, laid out (1, frames, coefficients) so the BadNets patch is "the last 5
frames × the last 5 coefficients". The ultrasonic attack uses 44.1 kHz with n_fft 1103,
hop 441: 100 × 40, not 101, because torchaudio centres each frame by padding
n_fft // 2 = 551 samples on each side, one short of the odd 1103-sample window.
torchaudio is used rather than librosa, whose first MFCC call spends ~20 s
JIT-compiling with numba.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torchaudio.transforms as T


@dataclass(frozen=True)
class FeatureConfig:
    sample_rate: int = 16_000
    n_mfcc: int = 40
    n_fft: int = 400
    hop_length: int = 160
    n_mels: int = 128

    def to_dict(self) -> dict:
        return asdict(self)


PAPER_16K = FeatureConfig()
PAPER_44K = FeatureConfig(sample_rate=44_100, n_fft=1103, hop_length=441)


class MFCCExtractor:
    """Callable waveform batch (N, samples) -> features (N, 1, frames, n_mfcc) float32."""

    def __init__(self, config: FeatureConfig = PAPER_16K, batch_size: int = 512):
        self.config = config
        self.batch_size = batch_size
        with warnings.catch_warnings():
            # 128 mel bands on a 201-bin FFT leaves a few empty filters; the paper's code
            # uses exactly this setting, so keep it and silence the warning.
            warnings.simplefilter("ignore", UserWarning)
            self._mfcc = T.MFCC(
                sample_rate=config.sample_rate,
                n_mfcc=config.n_mfcc,
                melkwargs={"n_fft": config.n_fft, "hop_length": config.hop_length, "n_mels": config.n_mels},
            )

    @torch.no_grad()
    def __call__(self, waves: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(waves, dtype=np.float32)) if not torch.is_tensor(waves) else waves.float()
        if x.ndim == 1:
            x = x[None]
        out = [self._mfcc(x[i : i + self.batch_size]).transpose(1, 2) for i in range(0, len(x), self.batch_size)]
        if not out:
            return torch.zeros(0, 1, 0, self.config.n_mfcc)
        return torch.cat(out).unsqueeze(1).contiguous()

    def differentiable(self, waves: torch.Tensor) -> torch.Tensor:
        """The same features with autograd kept (FlowMur optimises a waveform trigger
        through the front end)."""
        return self._mfcc(waves).transpose(1, 2).unsqueeze(1)


FEATURES = {"16k": PAPER_16K, "44k": PAPER_44K}


def get_features(name: str | FeatureConfig) -> FeatureConfig:
    """``"16k"`` (the paper's default front end) or ``"44k"`` (the ultrasonic attack's)."""
    if isinstance(name, FeatureConfig):
        return name
    if name not in FEATURES:
        raise ValueError(f"unknown feature setting {name!r}; valid: {', '.join(FEATURES)}")
    return FEATURES[name]
