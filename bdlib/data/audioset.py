"""In-memory labelled audio: the one container every dataset loader returns.

Why one container: attacks act on waveforms, features are computed from waveforms, and
defenses see features; keeping waves, labels, speakers and split together (and indexing
them together) makes poisoned-subset bookkeeping exact.
"""
from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm  # text bars: readable in papermill outputs too

from ..audio import AudioFileError, read_audio_counted
from .clips import ClipPolicy, LoadReport, conform


@dataclass
class AudioSet:
    waves: np.ndarray  # (N, samples) float32
    labels: np.ndarray  # (N,) int64 class indices
    speakers: np.ndarray  # (N,) str
    class_names: tuple[str, ...]
    sample_rate: int
    paths: np.ndarray | None = None
    report: LoadReport | None = None  # what the clip policy did while loading (load_split)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx) -> "AudioSet":
        """Rows ``idx``; the load report stays with the split it describes (not copied)."""
        idx = np.asarray(idx)
        return AudioSet(self.waves[idx], self.labels[idx], self.speakers[idx], self.class_names,
                        self.sample_rate, None if self.paths is None else self.paths[idx])

    def with_waves(self, waves: np.ndarray, labels: np.ndarray | None = None) -> "AudioSet":
        return AudioSet(np.asarray(waves, dtype=np.float32), self.labels if labels is None else np.asarray(labels),
                        self.speakers, self.class_names, self.sample_rate, self.paths, self.report)


def load_split(manifest: pd.DataFrame, root: str | os.PathLike, split: str, class_names: tuple[str, ...],
               sample_rate: int, clip_seconds: float = 1.0, resample: bool = True,
               progress: bool = False, *, policy: ClipPolicy | None = None, strict: bool | None = None) -> AudioSet:
    """Read the audio files of one split of a manifest (columns path, label, speaker, split).

    Every file is down-mixed, resampled (when ``resample`` is set; the ultrasonic attack
    needs 44.1 kHz; else a file at another rate is an error naming it) and padded/cropped
    to ``clip_seconds`` as ``policy`` says (see :mod:`bdlib.data.clips`). Without a
    policy the historical behaviour is kept exactly (:meth:`ClipPolicy.legacy`: mean
    down-mix, zero padding after the clip, head crop).

    ``strict`` (default: True without a policy, False with one): an unreadable, empty or
    corrupt file raises :class:`AudioFileError` naming it; when not strict it is skipped,
    listed in ``result.report.skipped`` with the reason, and loading goes on, so one stray
    file does not abort a folder of thousands. A missing file is such a file too (its message
    says it does not exist); a missing ``root`` is a ``FileNotFoundError`` naming it.

    Every manifest path must stay inside ``root``: an absolute path or one whose ``..``
    parts climb out of it is a ``ValueError`` naming the row, whatever ``strict`` says
    (the check is on the path as written; symbolic links inside the root are followed).
    Float samples outside [-1, 1] are clipped; such files are listed in ``report.clipped``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} does not exist" if not root.exists()
                                else f"dataset root {root} is not a folder")
    strict = policy is None if strict is None else strict
    policy = ClipPolicy.legacy() if policy is None else policy
    rows = manifest[manifest["split"] == split]
    if rows.empty:
        raise ValueError(f"split {split!r} is empty; splits present: {sorted(manifest['split'].unique())}")
    unknown = sorted(set(rows["label"]) - set(class_names))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the classes {list(class_names)}")
    check_inside_root(rows, root)
    n = int(round(sample_rate * clip_seconds))
    report = LoadReport(split=split, sample_rate=sample_rate, clip_samples=n, policy=policy, total=len(rows))
    waves = np.zeros((len(rows), n), dtype=np.float32)
    keep = np.zeros(len(rows), dtype=bool)
    for i, path in enumerate(tqdm(rows["path"].astype(str), desc=f"reading {split}", disable=not progress)):
        try:
            data, sr, n_clipped = read_audio_counted(root / path)
            if sr != sample_rate and not resample:
                raise AudioFileError(f"audio file {root / path} has sample rate {sr} Hz, expected {sample_rate} Hz")
        except AudioFileError as exc:
            if strict:
                raise
            report.skip(path, str(exc))
            continue
        waves[i], info = conform(data, sr, sample_rate, n, policy, key=path)
        info.clipped = n_clipped
        report.add(path, info)
        keep[i] = True
    if not keep.any():
        raise AudioFileError(f"no file of split {split!r} under {root} could be read; first problems: "
                             + "; ".join(f"{p}: {r}" for p, r in report.skipped[:3]))
    rows = rows[keep]
    lookup = {c: i for i, c in enumerate(class_names)}
    return AudioSet(
        waves=waves[keep] if not keep.all() else waves,
        labels=np.array([lookup[c] for c in rows["label"]], dtype=np.int64),
        speakers=rows["speaker"].astype(str).to_numpy(),
        class_names=tuple(class_names),
        sample_rate=sample_rate,
        paths=rows["path"].astype(str).to_numpy(),
        report=report,
    )


def check_inside_root(rows: pd.DataFrame, root: Path) -> None:
    """Reject a manifest row whose path is absolute or climbs out of ``root`` with ``..``
    (``../../etc/passwd``), naming the row. Lexical, so a symlinked folder inside the root
    (data on another disk) is still allowed."""
    for label, path in zip(rows.index, rows["path"].astype(str)):
        norm = posixpath.normpath(path.replace("\\", "/"))
        if posixpath.isabs(norm) or norm == ".." or norm.startswith("../"):
            raise ValueError(f"manifest row {label}: path {path!r} resolves outside the dataset root {root}; "
                             "manifest paths must be relative to the root and stay inside it")


__all__ = ["AudioSet", "ClipPolicy", "LoadReport", "load_split", "AudioFileError"]
