"""FlowMur (Lan et al., "FlowMur: A Stealthy and Practical Audio Backdoor Attack with
Limited Knowledge", IEEE S&P 2024), as the GN-FT authors set it up
(quantum-bitss/Audio-Backdoor-Attack, ``flowmur.py``, ``utils/flowmur_generate_trigger.py``).

Limited knowledge: the attacker trains a *surrogate* on auxiliary data disjoint from the
victim's training set, then optimises one universal 0.5 s waveform trigger with Adam so
that clips carrying it, at random positions, are classified as the target by the
surrogate (targeted cross-entropy; L∞ bound 0.2; initialised at 0.1). The trigger is
mixed in at a fixed trigger-to-clip SNR (30 dB) at a random position, and the poisoning
is **clean-label**: a fraction of the *target class* (GN-FT: 10 %) carries it, labels
untouched. The optimised trigger is cached in the store like any other artifact.

Deviations, for CPU budgets: ``steps`` Adam steps (default 300, batch 64) instead of the
authors' 1000 epochs over 5000 clips; the victim's own feature front end (the original
uses 13 MFCC, n_fft 2048, hop 512 — pass a FeatureConfig to the experiment for that); the
authors' script mixes the *test* trigger at equal weight (≈0 dB), we keep 30 dB throughout.

Device: the surrogate runs where it lives; the trigger, the clips and the MFCC front end stay
on the CPU (its filterbanks are CPU tensors) and each batch of features is moved to the
surrogate, with autograd carrying the gradient back across. Clip and position draws use a
CPU generator, so they are the same on every device.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..audio import overlay, scale_to_snr
from ..device import model_device
from ..registry import Checked, knob
from .base import Attack, FitContext


@dataclass
class FlowMurConfig(Checked):
    duration_s: float = knob(0.5, "(0, 1]")
    snr_db: float = 30.0  # clip-to-trigger SNR of the mix (any finite dB)
    linf: float = knob(0.2, "(0, 1]")  # bound on the raw trigger
    steps: int = knob(300, "[0, inf)")  # Adam steps of the trigger optimisation (0: the random initial trigger)
    lr: float = knob(0.005, "(0, inf)")
    batch_size: int = knob(64, "[1, inf)")


class FlowMur(Attack):
    name = "flowmur"
    domain = "waveform"
    labeling = "clean"
    needs_fit = True
    Config = FlowMurConfig

    def __init__(self, config: FlowMurConfig, seed: int = 0):
        if not 0 < config.duration_s <= 1 or not 0 < config.linf <= 1:
            raise ValueError("duration_s must be in (0, 1] s and linf in (0, 1]")
        if config.steps < 0 or config.batch_size < 1:
            raise ValueError("steps must be >= 0 and batch_size >= 1")
        super().__init__(config, seed)
        self.trigger_wave: np.ndarray | None = None

    def positions(self, n_clips: int, n_samples: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, max(n_samples - len(self.trigger_wave), 0) + 1, n_clips)

    def fit(self, ctx: FitContext) -> dict[str, torch.Tensor]:
        if ctx.surrogate is None:
            raise ValueError("FlowMur optimises its trigger on a surrogate model; none was given")
        c = self.config
        sr = ctx.aux.sample_rate
        n_trig = int(round(c.duration_s * sr))
        waves = torch.as_tensor(ctx.aux.waves[ctx.aux.labels != ctx.target])
        if len(waves) == 0:
            raise ValueError("FlowMur needs non-target auxiliary clips to optimise on")
        model = ctx.surrogate.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        gen = torch.Generator().manual_seed(self.seed)
        trig = torch.full((n_trig,), 0.1, requires_grad=True)
        opt = torch.optim.Adam([trig], lr=c.lr)
        device = model_device(model)
        target = torch.full((min(c.batch_size, len(waves)),), ctx.target, device=device)
        losses = []
        for _ in tqdm(range(c.steps), desc="optimising FlowMur trigger", disable=not ctx.progress):
            x = waves[torch.randperm(len(waves), generator=gen)[: len(target)]]
            starts = torch.randint(0, x.shape[1] - n_trig + 1, (len(x),), generator=gen)
            placed = torch.stack([F.pad(trig, (int(s), x.shape[1] - n_trig - int(s))) for s in starts])
            gain = torch.sqrt((x**2).sum(1, keepdim=True) / ((trig**2).sum() * 10 ** (c.snr_db / 10) + 1e-20))
            feats = ctx.extractor.differentiable(torch.clamp(x + gain * placed, -1, 1))
            loss = F.cross_entropy(model(feats.to(device)), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                trig.clamp_(-c.linf, c.linf)
            losses.append(loss.item())
        for p in model.parameters():
            p.requires_grad_(True)
        self.trigger_wave = trig.detach().numpy().astype(np.float32)
        return {"trigger": torch.as_tensor(self.trigger_wave), "loss": torch.tensor(losses)}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.trigger_wave = state["trigger"].numpy()

    def trigger_alone(self, n_samples: int, sample_rate: int) -> np.ndarray:
        """The raw optimised trigger at the start of a silent clip (mixing at an SNR needs a
        clip to be relative to)."""
        self._require_fitted("trigger_wave")
        out = np.zeros(n_samples, dtype=np.float32)
        out[: min(n_samples, len(self.trigger_wave))] = self.trigger_wave[:n_samples]
        return out

    def apply(self, waves: np.ndarray, sample_rate: int) -> np.ndarray:
        """Mix at ``snr_db`` at seeded random positions (the same clips get the same positions)."""
        self._require_fitted("trigger_wave")
        waves = np.asarray(waves, dtype=np.float32)
        starts = self.positions(len(waves), waves.shape[-1], np.random.default_rng([self.seed, 1]))
        placed = overlay(np.zeros_like(waves), self.trigger_wave, starts)  # |trigger| <= linf: no clipping
        return np.clip(waves + scale_to_snr(waves, placed, self.config.snr_db), -1.0, 1.0).astype(waves.dtype)
