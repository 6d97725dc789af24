"""BadNets-audio (Gu et al., "BadNets", 2017, adapted to speech as in the GN-FT paper).

``badnets``: the paper's form, a feature-domain patch — the last ``frames`` MFCC frames ×
the last ``coeffs`` coefficients overwritten with a constant (−200), as in the GN-FT
authors' code (quantum-bitss/Audio-Backdoor-Attack, ``utils/badnet_trigger.py``). It
cannot be played; it tests the defense against a maximally salient trigger.

``badnets_burst``: a physically playable counterpart — a short fixed burst (seeded white
noise or a pure tone) at a fixed position with a fixed peak amplitude, added to the
waveform and clipped to [−1, 1].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..registry import Checked, check_choice, knob
from .base import Attack


@dataclass
class BadNetsConfig(Checked):
    frames: int = knob(5, "[1, inf)")  # patch width in MFCC frames
    coeffs: int = knob(5, "[1, inf)")  # patch height in coefficients
    value: float = -200.0  # any finite value


class BadNets(Attack):
    name = "badnets"
    domain = "features"
    Config = BadNetsConfig

    def __init__(self, config: BadNetsConfig, seed: int = 0):
        if config.frames < 1 or config.coeffs < 1:
            raise ValueError(f"patch size must be positive, got frames={config.frames} coeffs={config.coeffs}")
        super().__init__(config, seed)

    def apply_features(self, feats: torch.Tensor) -> torch.Tensor:
        out = feats.clone()
        out[..., -self.config.frames :, -self.config.coeffs :] = self.config.value
        return out


POSITIONS = ("start", "mid", "end")
BURST_KINDS = ("noise", "tone")


@dataclass
class BurstConfig(Checked):
    kind: str = knob("noise", choices=BURST_KINDS)  # "noise" | "tone"
    duration_s: float = knob(0.1, "(0, 1]")
    position: str = knob("end", choices=POSITIONS)  # "start" | "mid" | "end"
    amplitude: float = knob(0.05, "(0, 1]")  # peak of the burst, full scale = 1
    freq_hz: float = knob(3000.0, "(0, inf)")  # tone only


class BadNetsBurst(Attack):
    name = "badnets_burst"
    domain = "waveform"
    Config = BurstConfig

    def __init__(self, config: BurstConfig, seed: int = 0):
        check_choice(config.kind, BURST_KINDS, "burst kind")
        check_choice(config.position, POSITIONS, "position")
        if not 0 < config.duration_s <= 1 or not 0 < config.amplitude <= 1:
            raise ValueError("duration_s must be in (0, 1] s and amplitude in (0, 1]")
        super().__init__(config, seed)

    def trigger(self, n_samples: int, sample_rate: int) -> np.ndarray:
        """The burst alone, placed in a silent clip of ``n_samples``."""
        c = self.config
        n = min(int(round(c.duration_s * sample_rate)), n_samples)
        if c.kind == "noise":
            burst = np.random.default_rng(self.seed).uniform(-1, 1, n)
        else:
            burst = np.sin(2 * np.pi * c.freq_hz * np.arange(n) / sample_rate)
        burst = c.amplitude * burst / (np.abs(burst).max() + 1e-12)
        start = {"start": 0, "mid": (n_samples - n) // 2, "end": n_samples - n}[c.position]
        out = np.zeros(n_samples, dtype=np.float32)
        out[start : start + n] = burst
        return out

    def apply(self, waves: np.ndarray, sample_rate: int) -> np.ndarray:
        waves = np.asarray(waves, dtype=np.float32)
        return np.clip(waves + self.trigger(waves.shape[-1], sample_rate), -1.0, 1.0).astype(waves.dtype)
