"""In-memory labelled audio: the one container every dataset loader returns.

Why one container: attacks act on waveforms, features are computed from waveforms, and
defenses see features; keeping waves, labels, speakers and split together (and indexing
them together) makes poisoned-subset bookkeeping exact.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm  # text bars: readable in papermill outputs too

from ..audio import AudioFileError, fit_length, read_wav


@dataclass
class AudioSet:
    waves: np.ndarray  # (N, samples) float32
    labels: np.ndarray  # (N,) int64 class indices
    speakers: np.ndarray  # (N,) str
    class_names: tuple[str, ...]
    sample_rate: int
    paths: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx) -> "AudioSet":
        idx = np.asarray(idx)
        return AudioSet(self.waves[idx], self.labels[idx], self.speakers[idx], self.class_names,
                        self.sample_rate, None if self.paths is None else self.paths[idx])

    def with_waves(self, waves: np.ndarray, labels: np.ndarray | None = None) -> "AudioSet":
        return AudioSet(np.asarray(waves, dtype=np.float32), self.labels if labels is None else np.asarray(labels),
                        self.speakers, self.class_names, self.sample_rate, self.paths)


def load_split(manifest: pd.DataFrame, root: str | os.PathLike, split: str, class_names: tuple[str, ...],
               sample_rate: int, clip_seconds: float = 1.0, resample: bool = True,
               progress: bool = False) -> AudioSet:
    """Read the wavs of one split of a manifest (columns path, label, speaker, split).

    Clips are padded/cropped to ``clip_seconds``; files at another rate are resampled when
    ``resample`` is set (the ultrasonic attack needs 44.1 kHz), else rejected by name.
    """
    root = Path(root)
    rows = manifest[manifest["split"] == split]
    if rows.empty:
        raise ValueError(f"split {split!r} is empty; splits present: {sorted(manifest['split'].unique())}")
    unknown = sorted(set(rows["label"]) - set(class_names))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the classes {list(class_names)}")
    n = int(round(sample_rate * clip_seconds))
    waves = np.zeros((len(rows), n), dtype=np.float32)
    for i, path in enumerate(tqdm(rows["path"], desc=f"reading {split}", disable=not progress)):
        wav = read_wav(root / path, sample_rate, resample=resample)
        waves[i] = fit_length(wav, n)
    lookup = {c: i for i, c in enumerate(class_names)}
    return AudioSet(
        waves=waves,
        labels=np.array([lookup[c] for c in rows["label"]], dtype=np.int64),
        speakers=rows["speaker"].astype(str).to_numpy(),
        class_names=tuple(class_names),
        sample_rate=sample_rate,
        paths=rows["path"].astype(str).to_numpy(),
    )


__all__ = ["AudioSet", "load_split", "AudioFileError"]
