"""Blended (Chen et al., "Targeted Backdoor Attacks on Deep Learning Systems Using Data
Poisoning", 2017), carried over to audio.

The trigger is one fixed, full-length signal — seeded white noise or a seeded sequence of
pure tones — blended into the *whole* clip: ``x' = (1 − α)·x + α·t``. Unlike a burst it
has no position to find; unlike BadNets it is playable. α = 0.05 by default (BackdoorBench
uses 0.2 on images; on the embedded speech α = 0.1 of white noise is already louder than the
voice, a median SNR of −2.3 dB in the smoke profile).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..registry import Checked, check_choice, knob
from .base import Attack

BLEND_KINDS = ("noise", "tones")


@dataclass
class BlendedConfig(Checked):
    kind: str = knob("noise", choices=BLEND_KINDS)  # "noise" | "tones"
    alpha: float = knob(0.05, "(0, 1)")  # blend ratio
    n_tones: int = knob(8, "[1, inf)")  # tones only: notes in the sequence


class Blended(Attack):
    name = "blended"
    domain = "waveform"
    Config = BlendedConfig

    def __init__(self, config: BlendedConfig, seed: int = 0):
        check_choice(config.kind, BLEND_KINDS, "blend trigger kind")
        if not 0 < config.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {config.alpha}")
        if config.n_tones < 1:
            raise ValueError(f"n_tones must be >= 1, got {config.n_tones}")
        super().__init__(config, seed)

    def trigger(self, n_samples: int, sample_rate: int) -> np.ndarray:
        """The full-length trigger ``t`` (peak 1), identical for every clip of this seed."""
        rng = np.random.default_rng(self.seed)
        if self.config.kind == "noise":
            t = rng.uniform(-1.0, 1.0, n_samples)
        else:
            freqs = rng.uniform(300.0, min(4000.0, 0.45 * sample_rate), self.config.n_tones)
            per = np.repeat(freqs, -(-n_samples // self.config.n_tones))[:n_samples]
            t = np.sin(2 * np.pi * np.cumsum(per) / sample_rate)  # phase-continuous
        return (t / np.abs(t).max()).astype(np.float32)

    def apply(self, waves: np.ndarray, sample_rate: int) -> np.ndarray:
        waves = np.asarray(waves, dtype=np.float32)
        a = self.config.alpha
        return np.clip((1 - a) * waves + a * self.trigger(waves.shape[-1], sample_rate), -1.0, 1.0).astype(waves.dtype)
