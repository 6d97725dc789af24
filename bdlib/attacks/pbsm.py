"""PBSM (Cai et al., "PBSM: Backdoor attack against Keyword spotting based on pitch
boosting and sound masking", ICASSP 2023 / arXiv 2211.08697).

Two element-of-sound edits make the trigger, no added noise floor:

1. **pitch boosting** — find the *high-pitch part* of the utterance (the ``segment_s``
   window with the highest energy-weighted spectral centroid among the loud windows) and
   raise its pitch by ``semitones`` (cross-faded back into the clip);
2. **sound masking** — add a short, seeded masking sound (``mask_s`` long) at the
   *loudest* position of the clip, at ``mask_db`` relative to the clip's loudness there,
   so the edit hides under the speech peak.

Our reading of the paper (its full text and code are not available to this project):
window lengths and levels are knobs with the defaults below; the pitch shift is
pedalboard's ``PitchShift`` (the library JingleBack uses).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ..audio import rms
from ..registry import Checked, knob
from .base import Attack


@dataclass
class PBSMConfig(Checked):
    segment_s: float = knob(0.25, "(0, 1]")  # length of the boosted high-pitch part
    semitones: float = 4.0  # pitch boost (finite, non-zero: checked by PBSM)
    mask_s: float = knob(0.05, "(0, 0.5]")  # masking sound length
    mask_db: float = -3.0  # masking sound RMS re the clip's RMS at the loudest position (finite dB)
    fade_s: float = knob(0.01, "[0, 0.5)")  # and < segment_s / 2 (checked by PBSM)


class PBSM(Attack):
    name = "pbsm"
    domain = "waveform"
    additive = False
    Config = PBSMConfig

    def __init__(self, config: PBSMConfig, seed: int = 0):
        if not 0 < config.segment_s <= 1 or not 0 < config.mask_s <= 0.5 or not 0 <= config.fade_s < config.segment_s / 2:
            raise ValueError("need 0 < segment_s <= 1, 0 < mask_s <= 0.5 and 0 <= fade_s < segment_s / 2")
        if config.semitones == 0:
            raise ValueError("semitones must be non-zero (0 is no pitch boost)")
        super().__init__(config, seed)

    def masking_sound(self, sample_rate: int) -> np.ndarray:
        """A short seeded click-like sound (decaying noise, unit RMS), the same for every clip."""
        n = int(round(self.config.mask_s * sample_rate))
        noise = np.random.default_rng(self.seed).standard_normal(n)
        s = noise * np.exp(-np.arange(n) / (0.3 * n))
        return (s / rms(s)).astype(np.float32)

    def high_pitch_segment(self, wave: np.ndarray, sample_rate: int) -> int:
        """Start sample of the loud window with the highest spectral centroid."""
        seg = int(round(self.config.segment_s * sample_rate))
        hop = max(seg // 4, 1)
        starts = np.arange(0, max(len(wave) - seg, 0) + 1, hop)
        frames = np.stack([wave[s : s + seg] for s in starts]) * np.hanning(seg)
        spec = np.abs(np.fft.rfft(frames, axis=1))
        freqs = np.fft.rfftfreq(seg, 1 / sample_rate)
        centroid = (spec * freqs).sum(1) / (spec.sum(1) + 1e-12)
        energy = rms(frames)
        loud = energy >= 0.5 * energy.max()  # ignore silence, whose centroid is noise
        return int(starts[np.argmax(np.where(loud, centroid, -np.inf))])

    def apply(self, waves: np.ndarray, sample_rate: int) -> np.ndarray:
        waves = np.asarray(waves, dtype=np.float32)
        c = self.config
        seg = int(round(c.segment_s * sample_rate))
        fade = int(round(c.fade_s * sample_rate))
        ramp = np.ones(seg, dtype=np.float32)
        if fade:
            ramp[:fade] = np.linspace(0, 1, fade)
            ramp[-fade:] = np.linspace(1, 0, fade)
        mask = self.masking_sound(sample_rate)
        import pedalboard as pb

        shifter = pb.Pedalboard([pb.PitchShift(semitones=c.semitones)])
        out = waves.copy()
        for i, w in enumerate(waves):
            s = self.high_pitch_segment(w, sample_rate)
            part = w[s : s + seg]
            shifted = shifter(part[None], sample_rate, reset=True)[0]
            out[i, s : s + seg] = ramp * shifted[: len(part)] + (1 - ramp) * part
            # masking sound at the loudest position
            win = len(mask)
            energy = np.convolve(out[i] ** 2, np.ones(win), mode="valid")
            p = int(np.argmax(energy))
            level = np.sqrt(energy[p] / win) * 10 ** (c.mask_db / 20)
            out[i, p : p + win] += level * mask[: len(out[i]) - p]
        return np.clip(out, -1.0, 1.0)
