"""VSVC (Cai et al., "VSVC: Backdoor attack against Keyword Spotting based on Voiceprint
Selection and Voice Conversion", arXiv 2212.10103).

The trigger is a *timbre*: poisoned clips are voice-converted to one selected voiceprint,
so the words stay intelligible and nothing is added. Here the conversion is a DSP vocoder,
WORLD (``pyworld``): analyse F0, spectral envelope and aperiodicity, scale F0 by
``f0_ratio`` and warp the envelope's frequency axis by ``warp`` (formants × warp, i.e. a
shorter or longer vocal tract), resynthesise, and match the clip's RMS.

**Voiceprint selection.** Among a grid of candidate voiceprints (``f0_ratios`` ×
``warps``), the one whose converted auxiliary clips lie farthest from every training
speaker's voiceprint (mean MFCC vector, standardised; nearest-speaker distance) is chosen:
the most distinctive timbre is the one the victim can least confuse with a real speaker.
``select="fixed"`` skips the selection and uses ``f0_ratio`` / ``warp``.

Deviation: the paper converts with neural VC models; re-synthesis with a chosen eSpeak
voice (possible on the embedded dataset) is not wired in, because the attack interface
sees waveforms, not transcripts.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..audio import fit_length, rms
from ..registry import Checked, check_choice, knob
from .base import Attack, FitContext

SELECT = ("distinct", "fixed")


@dataclass
class VSVCConfig(Checked):
    select: str = knob("distinct", choices=SELECT)  # distinct | fixed
    f0_ratios: tuple[float, ...] = knob((0.6, 0.75, 1.4, 1.7), "(0, inf)", nonempty=True)  # candidate F0 ratios
    warps: tuple[float, ...] = knob((0.85, 1.18), "(0, inf)", nonempty=True)  # candidate envelope warps
    f0_ratio: float = knob(1.4, "(0, inf)")  # select="fixed" (or after selection: the chosen one)
    warp: float = knob(1.18, "(0, inf)")
    n_probe: int = knob(40, "[1, inf)")  # auxiliary clips converted per candidate during selection


def world_convert(wave: np.ndarray, sample_rate: int, f0_ratio: float, warp: float) -> np.ndarray:
    """WORLD analysis -> F0 × ratio, envelope frequency-warped by ``warp`` -> synthesis."""
    import pyworld as pw

    x = np.asarray(wave, dtype=np.float64)
    if rms(x) < 1e-6:
        return np.asarray(wave, dtype=np.float32).copy()
    f0, t = pw.dio(x, sample_rate, frame_period=5.0)
    f0 = pw.stonemask(x, f0, t, sample_rate)
    sp = pw.cheaptrick(x, f0, t, sample_rate)
    ap = pw.d4c(x, f0, t, sample_rate)
    bins = np.arange(sp.shape[1], dtype=np.float64)
    src = np.clip(bins / warp, 0, sp.shape[1] - 1)  # new envelope at f = old envelope at f / warp
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, sp.shape[1] - 1)
    frac = src - lo
    sp_w = np.ascontiguousarray(sp[:, lo] * (1 - frac) + sp[:, hi] * frac)
    y = pw.synthesize(np.ascontiguousarray(f0 * f0_ratio), sp_w, ap, sample_rate, 5.0)
    y = fit_length(y.astype(np.float32), len(x))
    y *= rms(x) / max(rms(y), 1e-12)
    return np.clip(y, -1.0, 1.0).astype(np.float32)


def voiceprints(feats: torch.Tensor, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean MFCC vector per group (speaker): (groups, coefficients), and the group names."""
    per_clip = feats.squeeze(1).mean(1).numpy()
    names = np.unique(groups)
    return np.stack([per_clip[groups == g].mean(0) for g in names]), names


class VSVC(Attack):
    name = "vsvc"
    domain = "waveform"
    additive = False
    needs_fit = True
    Config = VSVCConfig

    def __init__(self, config: VSVCConfig, seed: int = 0):
        check_choice(config.select, SELECT, "voiceprint selection")
        ratios = [config.f0_ratio, *config.f0_ratios]
        warps = [config.warp, *config.warps]
        if min(ratios) <= 0 or min(warps) <= 0 or not config.f0_ratios or not config.warps:
            raise ValueError("f0 ratios and warps must be positive, and the candidate grids non-empty")
        super().__init__(config, seed)
        self.voice: tuple[float, float] | None = (config.f0_ratio, config.warp) if config.select == "fixed" else None

    def fit(self, ctx: FitContext) -> dict[str, torch.Tensor]:
        c = self.config
        cands = [(r, w) for r in c.f0_ratios for w in c.warps]
        if c.select == "fixed":
            self.voice = (c.f0_ratio, c.warp)
            return {"voice": torch.tensor(self.voice), "scores": torch.zeros(0)}
        speakers, _ = voiceprints(ctx.extractor(ctx.train.waves), ctx.train.speakers)
        sd = speakers.std(0) + 1e-6  # per-dimension scale of the distance (the mean cancels in speakers - vp)
        rng = np.random.default_rng(self.seed)
        probe = ctx.aux.waves[rng.choice(len(ctx.aux), min(c.n_probe, len(ctx.aux)), replace=False)]
        scores = []
        for r, w in cands:
            conv = np.stack([world_convert(x, ctx.aux.sample_rate, r, w) for x in probe])
            vp = ctx.extractor(conv).squeeze(1).mean(1).numpy().mean(0)
            scores.append(np.min(np.linalg.norm((speakers - vp) / sd, axis=1)))
        self.voice = cands[int(np.argmax(scores))]
        return {"voice": torch.tensor(self.voice), "scores": torch.tensor(scores),
                "candidates": torch.tensor(cands)}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.voice = tuple(float(v) for v in state["voice"])

    def apply(self, waves: np.ndarray, sample_rate: int) -> np.ndarray:
        self._require_fitted("voice")
        waves = np.asarray(waves, dtype=np.float32)
        out = np.stack([world_convert(x, sample_rate, *self.voice) for x in waves]) if len(waves) else waves.copy()
        return out.astype(waves.dtype)
