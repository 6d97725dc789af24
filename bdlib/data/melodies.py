"""A seeded pool of short synthetic music clips: DABA's natural-sound triggers, offline.

Why synthesise: DABA (Liu et al., ACM MM 2022) draws its triggers from a library of short
music clips, and no such library ships with this project or may be downloaded silently.
Each clip here is a short melody — notes from a pentatonic or major scale, each with a few
harmonics, an attack/decay envelope and a little vibrato — so the pool has the spectral
and rhythmic variety that the certainty-based trigger selection needs. Users can point
DABA at their own wavs instead (``trigger_dir``).
"""
from __future__ import annotations

import numpy as np

SCALES = {"pentatonic": (0, 2, 4, 7, 9), "major": (0, 2, 4, 5, 7, 9, 11)}


def melody(seed: int, duration_s: float = 1.0, sample_rate: int = 16_000) -> np.ndarray:
    """One melody of ``duration_s`` (peak 1), fully determined by ``seed``."""
    rng = np.random.default_rng(seed)
    n = int(round(duration_s * sample_rate))
    scale = SCALES["pentatonic" if rng.random() < 0.5 else "major"]
    root = 220.0 * 2 ** (rng.integers(0, 12) / 12)  # A3 .. G#4
    n_notes = int(rng.integers(3, 9))
    bounds = np.sort(rng.choice(np.arange(1, n_notes * 4), n_notes - 1, replace=False)) / (n_notes * 4)
    edges = np.concatenate([[0], bounds, [1]]) * n
    harmonics = rng.uniform(0.1, 0.7, 4) ** np.arange(1, 5)  # brightness of the "instrument"
    vibrato_hz, vibrato_depth = rng.uniform(4, 7), rng.uniform(0, 0.01)
    out = np.zeros(n)
    for a, b in zip(edges[:-1].astype(int), edges[1:].astype(int)):
        if b - a < 8:
            continue
        f0 = root * 2 ** ((scale[rng.integers(len(scale))] + 12 * rng.integers(0, 2)) / 12)
        t = np.arange(b - a) / sample_rate
        phase = 2 * np.pi * f0 * (t + vibrato_depth * np.sin(2 * np.pi * vibrato_hz * t) / (2 * np.pi * vibrato_hz))
        note = sum(h * np.sin((k + 1) * phase) for k, h in enumerate(harmonics) if (k + 1) * f0 < 0.45 * sample_rate)
        env = np.minimum(1.0, t / 0.01) * np.exp(-t * rng.uniform(2, 8))  # 10 ms attack, decay
        out[a:b] += note * env
    return (out / (np.abs(out).max() + 1e-12)).astype(np.float32)


def melody_pool(n: int, seed: int, duration_s: float = 1.0, sample_rate: int = 16_000) -> np.ndarray:
    """``n`` melodies (n, samples); clip k depends on (seed, k) only."""
    return np.stack([melody(seed * 100_003 + k, duration_s, sample_rate) for k in range(n)])
