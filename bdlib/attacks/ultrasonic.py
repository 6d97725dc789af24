"""Ultrasonic trigger (Koffas et al., "Can You Hear It? Backdoor Attacks via Ultrasonic
Triggers", WiseML 2022; code: skoffas/ultrasonic_backdoor).

The trigger is a 21 kHz sine at −10 dBFS peak — above human hearing, but inside the band of
44.1 kHz audio, so the attack needs the 44.1 kHz front end (``features.PAPER_44K``: n_fft
1103, hop 441, 100 × 40 MFCC). Its *size* is a percentage of one second (2–100 %); it sits
at the start, middle or end of the clip (continuous), or is cut into 5 equal pieces at
0, 0.2, 0.4, 0.6 and 0.8 s (non-continuous; position is then unused). GN-FT's setting
(Sec. 4.1): 40 %, non-continuous. The trigger is added to the clip (and clipped to [−1, 1]).

At 16 kHz a 21 kHz tone cannot exist (Nyquist is 8 kHz). ``below_nyquist`` says what to do
then: ``"error"`` (default: refuse, naming the fix), ``"resample"`` (make it at 44.1 kHz and
resample with an anti-aliasing filter: it vanishes) or ``"alias"`` (sample the sine at the
low rate: it folds down to an audible |21000 − 16000| = 5 kHz tone).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..audio import fit_length, resample_np
from ..registry import Checked, check_choice, knob
from .badnets import POSITIONS
from .base import Attack

NATIVE_RATE = 44_100
BELOW_NYQUIST = ("error", "resample", "alias")


@dataclass
class UltrasonicConfig(Checked):
    freq_hz: float = knob(21_000.0, "(0, inf)")
    level_db: float = knob(-10.0, "(-inf, 0]")  # peak amplitude, dB re full scale
    size: int = knob(40, "[2, 100]")  # percent of one second
    position: str = knob("start", choices=POSITIONS)  # start | mid | end (continuous trigger only)
    continuous: bool = False
    below_nyquist: str = knob("error", choices=BELOW_NYQUIST)  # error | resample | alias


class Ultrasonic(Attack):
    name = "ultrasonic"
    domain = "waveform"
    features = "44k"
    Config = UltrasonicConfig

    def __init__(self, config: UltrasonicConfig, seed: int = 0):
        check_choice(config.position, POSITIONS, "position")
        check_choice(config.below_nyquist, BELOW_NYQUIST, "below_nyquist mode")
        if not 2 <= config.size <= 100:
            raise ValueError(f"size is a percentage of 1 s in [2, 100], got {config.size}")
        if config.level_db > 0:
            raise ValueError(f"level_db must be <= 0 dBFS, got {config.level_db}")
        super().__init__(config, seed)

    def mask(self, n_samples: int, sample_rate: int) -> np.ndarray:
        """Where the tone is on: ``size`` % of a second, continuous or in 5 pieces."""
        c = self.config
        on = int(round(c.size / 100 * sample_rate))
        m = np.zeros(n_samples, dtype=bool)
        if c.continuous:
            start = {"start": 0, "mid": (n_samples - on) // 2, "end": n_samples - on}[c.position]
            m[max(start, 0) : start + on] = True
        else:
            piece, step = on // 5, n_samples // 5
            for k in range(5):
                m[k * step : k * step + piece] = True
        return m

    def trigger(self, n_samples: int, sample_rate: int) -> np.ndarray:
        """The gated sine alone, at ``sample_rate`` (see ``below_nyquist`` for low rates)."""
        c = self.config
        if c.freq_hz >= sample_rate / 2:
            if c.below_nyquist == "error":
                raise ValueError(f"a {c.freq_hz:.0f} Hz trigger cannot exist at {sample_rate} Hz (Nyquist "
                                 f"{sample_rate / 2:.0f} Hz): use the 44.1 kHz features (load_experiment(..., "
                                 "features='44k')) or below_nyquist='resample' | 'alias'")
            if c.below_nyquist == "resample":
                n_native = int(np.ceil(n_samples * NATIVE_RATE / sample_rate))
                native = self._gated_sine(n_native, NATIVE_RATE)
                return fit_length(resample_np(native, NATIVE_RATE, sample_rate), n_samples)
        return self._gated_sine(n_samples, sample_rate)

    def _gated_sine(self, n_samples: int, sample_rate: int) -> np.ndarray:
        amp = 10 ** (self.config.level_db / 20.0)
        sine = amp * np.sin(2 * np.pi * self.config.freq_hz * np.arange(n_samples) / sample_rate)
        return (sine * self.mask(n_samples, sample_rate)).astype(np.float32)

    def apply(self, waves: np.ndarray, sample_rate: int) -> np.ndarray:
        waves = np.asarray(waves, dtype=np.float32)
        return np.clip(waves + self.trigger(waves.shape[-1], sample_rate), -1.0, 1.0).astype(waves.dtype)
