"""JingleBack / "Going in Style" (Koffas et al., "Going in Style: Audio Backdoors Through
Stylistic Transformations", ICASSP 2023; code: skoffas/going-in-style).

The trigger is not an added sound but a *style*: the whole clip goes through a guitar-pedal
chain from Spotify's ``pedalboard`` (the original's own library). The six styles of the
paper (index = ``style``):

0. pitch shift +10 semitones
1. distortion, 30 dB drive
2. chorus (rate 1 Hz, depth 5, centre delay 10 ms, no feedback, mix 0.5)
3. pitch shift +10, distortion 20 dB, chorus (as 2, centre delay 8 ms)
4. chorus (centre delay 15 ms), distortion 20 dB, reverb (room size 0.6)
5. gain +12 dB, ladder filter (12 dB/oct high-pass at 1 kHz), phaser

GN-FT's setting (Sec. 4.1): style 5. Each chain is rebuilt per call and reset per clip,
so the output depends on the clip only. Outputs are clipped to [−1, 1] (style 5's +12 dB
gain can exceed full scale; a wav file would clip there too).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..registry import Checked
from .base import Attack

STYLES = {
    0: "pitch +10 st",
    1: "distortion 30 dB",
    2: "chorus",
    3: "pitch +10 st, distortion 20 dB, chorus",
    4: "chorus, distortion 20 dB, reverb",
    5: "gain +12 dB, high-pass 1 kHz, phaser",
}


def style_board(style: int):
    """The pedal chain of one style (imported lazily: pedalboard is only needed here)."""
    import pedalboard as pb

    chorus = dict(rate_hz=1.0, depth=5.0, feedback=0.0, mix=0.5)
    boards = {
        0: lambda: [pb.PitchShift(semitones=10)],
        1: lambda: [pb.Distortion(drive_db=30)],
        2: lambda: [pb.Chorus(centre_delay_ms=10.0, **chorus)],
        3: lambda: [pb.PitchShift(semitones=10), pb.Distortion(drive_db=20), pb.Chorus(centre_delay_ms=8.0, **chorus)],
        4: lambda: [pb.Chorus(centre_delay_ms=15.0), pb.Distortion(drive_db=20), pb.Reverb(room_size=0.6)],
        5: lambda: [pb.Gain(gain_db=12), pb.LadderFilter(mode=pb.LadderFilter.Mode.HPF12, cutoff_hz=1000),
                    pb.Phaser()],
    }
    return pb.Pedalboard(boards[style]())


@dataclass
class JingleBackConfig(Checked):
    style: int = 5  # one of STYLES (checked by JingleBack, which lists them)


class JingleBack(Attack):
    name = "jingleback"
    domain = "waveform"
    additive = False
    Config = JingleBackConfig

    def __init__(self, config: JingleBackConfig, seed: int = 0):
        if config.style not in STYLES:
            raise ValueError(f"unknown style {config.style!r}; valid: "
                             + "; ".join(f"{k} ({v})" for k, v in STYLES.items()))
        super().__init__(config, seed)

    def apply(self, waves: np.ndarray, sample_rate: int) -> np.ndarray:
        waves = np.asarray(waves, dtype=np.float32)
        board = style_board(self.config.style)
        out = np.empty_like(waves)
        for i, w in enumerate(waves):
            y = board(w[None, :], sample_rate, reset=True)[0]
            n = min(len(y), len(w))
            out[i] = 0.0
            out[i, :n] = y[:n]
        return np.clip(out, -1.0, 1.0)
