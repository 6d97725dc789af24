"""DABA (Liu et al., "Opportunistic Backdoor Attacks: Exploring Human-imperceptible
Vulnerabilities on Speech Recognition Systems", ACM MM 2022), in the form the GN-FT
authors run it (quantum-bitss/Audio-Backdoor-Attack, ``utils/daba_*``).

The trigger is a short natural sound (music) overlaid on the clip from its start.
Two selections make it effective at a low poisoning rate:

* **certainty** — the trigger is the pool clip on which a (surrogate) model is most
  certain, i.e. whose softmax has the lowest entropy;
* **influence** — the hosts are the candidate non-target training clips (3× as many as
  are needed, drawn at random) whose poisoned version's softmax has the lowest
  cross-entropy to the trigger's softmax: clips the trigger already dominates.

Poisoned training clips carry the trigger at loudness variants 0, −5, …, −40 dBFS
(``variants``), so the backdoor generalises over volume; at test time it is −20 dBFS.
The pool is :func:`bdlib.data.melodies.melody_pool` (seeded) or the wavs in
``trigger_dir``. Deviation: the authors score certainty with an *untrained* victim
architecture; we use a surrogate trained on auxiliary data (the paper's own setting).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..audio import fit_length, overlay, read_wav, set_dbfs
from ..data.melodies import melody_pool
from ..registry import Checked, check_choice, knob
from ..training import predict_proba
from .base import Attack, FitContext

SELECTIONS = ("cer_inf", "cer", "random")
VARIANT_DBFS = (0.0, -5.0, -10.0, -15.0, -20.0, -25.0, -30.0, -35.0, -40.0)


@dataclass
class DABAConfig(Checked):
    pool_size: int = knob(20, "[1, inf)")
    duration_s: float = knob(1.0, "(0, inf)")  # synthetic pool only
    test_dbfs: float = knob(-20.0, "(-inf, 0]")
    variants: bool = True  # poison at 0 .. -40 dBFS instead of test_dbfs
    selection: str = knob("cer_inf", choices=SELECTIONS)  # cer_inf | cer (certainty only, random hosts) | random
    host_candidates: float = knob(3.0, "[1, inf)")  # candidates per needed host
    trigger_dir: str | None = None  # user wavs instead of the synthetic pool


class DABA(Attack):
    name = "daba"
    domain = "waveform"
    needs_fit = True
    Config = DABAConfig

    def __init__(self, config: DABAConfig, seed: int = 0):
        check_choice(config.selection, SELECTIONS, "DABA selection")
        if config.pool_size < 1 or config.host_candidates < 1:
            raise ValueError("pool_size must be >= 1 and host_candidates >= 1")
        if config.test_dbfs > 0:
            raise ValueError(f"test_dbfs must be <= 0, got {config.test_dbfs}")
        super().__init__(config, seed)
        self.trigger_wave: np.ndarray | None = None
        self.hosts: np.ndarray | None = None

    def pool(self, sample_rate: int) -> np.ndarray:
        """Candidate triggers (n, samples) at ``sample_rate``, peak-normalised."""
        c = self.config
        if c.trigger_dir is None:
            return melody_pool(c.pool_size, self.seed, c.duration_s, sample_rate)
        paths = sorted(Path(c.trigger_dir).glob("*.wav"))
        if not paths:
            raise FileNotFoundError(f"no .wav files in trigger_dir {c.trigger_dir}")
        clips = [read_wav(p, sample_rate, resample=True) for p in paths]
        n = max(len(x) for x in clips)
        return np.stack([fit_length(x / (np.abs(x).max() + 1e-12), n) for x in clips])

    # --- selection ------------------------------------------------------------------------
    def fit(self, ctx: FitContext) -> dict[str, torch.Tensor]:
        c = self.config
        rng = np.random.default_rng(self.seed)
        sr = ctx.train.sample_rate
        pool = self.pool(sr)
        labels = ctx.train.labels
        n_hosts = int(round(ctx.rate * len(labels)))
        nontarget = np.flatnonzero(labels != ctx.target)
        if n_hosts > len(nontarget):
            raise ValueError(f"cannot poison {n_hosts} clips: only {len(nontarget)} non-target clips")
        if c.selection == "random" or ctx.surrogate is None:
            if c.selection != "random":
                raise ValueError(f"DABA selection {c.selection!r} needs a surrogate model")
            k = int(rng.integers(len(pool)))
            entropy = np.full(len(pool), np.nan)
            hosts = rng.choice(nontarget, n_hosts, replace=False)
        else:
            trig_level = set_dbfs(pool, c.test_dbfs)
            probs = predict_proba(ctx.surrogate, ctx.extractor(fit_rows(trig_level, ctx.train.waves.shape[-1])))
            entropy = -(probs * np.log(np.clip(probs, 1e-12, None))).sum(1)
            k = int(np.argmin(entropy))  # certainty: most confident trigger
            cand = rng.choice(nontarget, min(len(nontarget), int(np.ceil(c.host_candidates * n_hosts))),
                              replace=False)
            if c.selection == "cer":
                hosts = cand[:n_hosts]
            else:  # influence: lowest CE(poisoned host softmax, trigger softmax)
                poisoned = overlay(ctx.train.waves[cand], trig_level[k])
                p_host = predict_proba(ctx.surrogate, ctx.extractor(poisoned))
                ce = -(p_host * np.log(np.clip(probs[k], 1e-12, None))).sum(1)
                hosts = cand[np.argsort(ce, kind="stable")[:n_hosts]]
        self.trigger_wave, self.hosts = pool[k], np.sort(hosts)
        return {"trigger": torch.as_tensor(pool[k]), "hosts": torch.as_tensor(self.hosts),
                "entropy": torch.as_tensor(entropy), "chosen": torch.tensor([k])}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.trigger_wave = state["trigger"].numpy()
        self.hosts = state["hosts"].numpy().astype(np.int64)

    def select_poison(self, labels, rate, target, rng) -> np.ndarray:
        self._require_fitted("hosts")
        if len(self.hosts) != int(round(rate * len(labels))):
            raise ValueError(f"DABA was fitted for {len(self.hosts)} hosts, not round({rate} × {len(labels)})")
        return self.hosts

    # --- the trigger ----------------------------------------------------------------------
    def trigger(self, level_dbfs: float) -> np.ndarray:
        self._require_fitted("trigger_wave")
        return set_dbfs(self.trigger_wave, level_dbfs)

    def apply(self, waves: np.ndarray, sample_rate: int) -> np.ndarray:
        return overlay(waves, self.trigger(self.config.test_dbfs)).astype(np.asarray(waves).dtype)

    def poison(self, waves: np.ndarray, sample_rate: int) -> np.ndarray:
        if not self.config.variants:
            return self.apply(waves, sample_rate)
        order = np.random.default_rng(self.seed).permutation(len(waves))
        levels = np.asarray(VARIANT_DBFS)[order % len(VARIANT_DBFS)]
        trig = np.stack([self.trigger(lv) for lv in levels]) if len(waves) else np.zeros((0, 1), np.float32)
        return overlay(waves, trig).astype(np.asarray(waves).dtype)


def fit_rows(x: np.ndarray, n: int) -> np.ndarray:
    return np.stack([fit_length(r, n) for r in x])

