"""How a messy real-world file becomes one fixed-length mono clip, and the report of it.

Why an explicit policy: real folders hold clips that are too short, too long, stereo,
phase-inverted stereo and at other rates. Each of these silently changes what a model
(and a trigger) sees, so the choices are written down here, applied the same way to
every file, and every file they touched is listed in a :class:`LoadReport`.

The policy (:class:`ClipPolicy` defaults):

* **Down-mix**: average the channels. When the average cancels (mono energy below
  ``stereo_cancel_ratio`` = 10 % of the mean channel energy, as with phase-inverted
  stereo) the loudest channel is used instead, and the file is reported.
* **Resample** to the target rate (band-limited sinc, :func:`bdlib.audio.resample_np`).
* **Too short**: placed in the centre (``pad="center"``) or at a random offset seeded by
  the policy seed and the file's path (``pad="random"``); the padding is Gaussian noise at
  ``pad_noise_dbfs`` = -60 dBFS RMS (std 0.001), seeded the same way, rather than
  digital silence, which no microphone produces and which MFCCs turn into -inf-like
  extremes a model can key on. A clip more than ``mostly_padding`` (50 %) padding is
  reported.
* **Too long**: cropped to the clip-length window of maximum energy (RMS), which keeps
  the spoken word of a long recording.

:meth:`ClipPolicy.legacy` is the loader's historical behaviour (mean down-mix, zero
padding after the clip, crop the head), kept so old callers get identical arrays.
"""
from __future__ import annotations

import dataclasses
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import numpy as np

from ..audio import resample_np
from ..registry import check_choice

PAD_MODES = ("center", "random", "start")
CROP_MODES = ("energy", "center", "start")


@dataclass(frozen=True)
class ClipPolicy:
    pad: str = "center"
    pad_noise_dbfs: float | None = -60.0  # None: digital silence
    crop: str = "energy"
    stereo_cancel_ratio: float = 0.1  # 0 disables the cancellation check
    mostly_padding: float = 0.5
    seed: int = 0

    def __post_init__(self):
        check_choice(self.pad, PAD_MODES, "pad mode")
        check_choice(self.crop, CROP_MODES, "crop mode")
        if not 0.0 <= self.stereo_cancel_ratio < 1.0:
            raise ValueError(f"stereo_cancel_ratio must be in [0, 1), got {self.stereo_cancel_ratio}")

    def to_dict(self) -> dict:
        """The policy as plain data (for store keys: another policy gives other clips)."""
        return dataclasses.asdict(self)

    @classmethod
    def legacy(cls) -> "ClipPolicy":
        """The historical loader: mean down-mix, zero padding after the clip, head crop."""
        return cls(pad="start", pad_noise_dbfs=None, crop="start", stereo_cancel_ratio=0.0)


@dataclass
class ClipInfo:
    """What the policy did to one file (the report aggregates these)."""

    source_rate: int
    channels: int
    source_samples: int  # at the target rate, before padding/cropping
    resampled: bool = False
    downmixed: bool = False
    cancelled_channel: int | None = None  # channel used when the average cancelled
    padded: int = 0  # samples of padding
    cropped: int = 0  # samples cropped away
    clipped: int = 0  # float samples outside [-1, 1] clipped on reading (bdlib.audio.read_audio)


def clip_rng(policy: ClipPolicy, key: str) -> np.random.Generator:
    """A generator that depends only on the policy seed and the file's path, so a clip's
    padding is the same whatever order (or subset) the files are loaded in."""
    return np.random.default_rng([policy.seed, zlib.crc32(key.encode())])


def downmix(data: np.ndarray, cancel_ratio: float) -> tuple[np.ndarray, int | None]:
    """``(frames, channels)`` -> mono. Returns the wave and the channel used when the
    channel average cancelled (None when the average was kept)."""
    if data.shape[1] == 1:
        return data[:, 0], None
    mono = data.mean(axis=1)
    if cancel_ratio > 0:
        chan_energy = np.mean(np.square(data, dtype=np.float64), axis=0)
        if chan_energy.mean() > 0 and np.mean(np.square(mono, dtype=np.float64)) < cancel_ratio * chan_energy.mean():
            best = int(np.argmax(chan_energy))
            return data[:, best].copy(), best
    return mono, None


def loudest_window(wav: np.ndarray, length: int) -> int:
    """Start of the ``length``-sample window with the most energy (first one on ties)."""
    cs = np.concatenate([[0.0], np.cumsum(np.square(wav, dtype=np.float64))])
    return int(np.argmax(cs[length:] - cs[:-length]))


def fit_clip(wav: np.ndarray, length: int, policy: ClipPolicy, key: str) -> tuple[np.ndarray, int, int]:
    """Pad or crop ``wav`` to ``length`` samples as ``policy`` says.

    Returns (clip, padded samples, cropped samples). ``key`` (the file's path) seeds the
    random offset and the padding noise.
    """
    wav = np.asarray(wav, dtype=np.float32)
    n = len(wav)
    if n == length:
        return wav.copy(), 0, 0
    if n > length:
        start = {"start": 0, "center": (n - length) // 2}.get(policy.crop)
        if start is None:
            start = loudest_window(wav, length)
        return wav[start : start + length].copy(), 0, n - length
    rng = clip_rng(policy, key)
    slack = length - n
    onset = {"start": 0, "center": slack // 2}.get(policy.pad)
    if onset is None:
        onset = int(rng.integers(0, slack + 1))
    if policy.pad_noise_dbfs is None:
        out = np.zeros(length, dtype=np.float32)
    else:
        out = (rng.standard_normal(length) * 10 ** (policy.pad_noise_dbfs / 20.0)).astype(np.float32)
    out[onset : onset + n] = wav
    return out, slack, 0


def conform(data: np.ndarray, sr: int, target_sr: int, length: int, policy: ClipPolicy,
            key: str) -> tuple[np.ndarray, ClipInfo]:
    """Down-mix, resample and pad/crop one file's ``(frames, channels)`` samples."""
    wav, cancelled = downmix(data, policy.stereo_cancel_ratio)
    info = ClipInfo(source_rate=sr, channels=data.shape[1], source_samples=0,
                    downmixed=data.shape[1] > 1, cancelled_channel=cancelled)
    if sr != target_sr:
        wav = resample_np(wav, sr, target_sr)
        info.resampled = True
    info.source_samples = len(wav)
    clip, info.padded, info.cropped = fit_clip(wav, length, policy, key)
    return clip, info


@dataclass
class LoadReport:
    """Everything the clip policy did while loading one split, file by file."""

    split: str
    sample_rate: int
    clip_samples: int
    policy: ClipPolicy
    total: int = 0
    loaded: int = 0
    cropped: list[str] = field(default_factory=list)
    padded: list[str] = field(default_factory=list)
    mostly_padding: list[str] = field(default_factory=list)
    resampled: dict[int, list[str]] = field(default_factory=dict)  # source rate -> paths
    downmixed: list[str] = field(default_factory=list)
    cancelled_stereo: list[tuple[str, int]] = field(default_factory=list)  # (path, channel used)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    rates_by_folder: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    clipped: list[tuple[str, int]] = field(default_factory=list)  # (path, samples clipped to [-1, 1])

    def add(self, path: str, info: ClipInfo) -> None:
        self.loaded += 1
        self.rates_by_folder[str(PurePosixPath(path).parent)][info.source_rate] += 1
        if info.cropped:
            self.cropped.append(path)
        if info.padded:
            self.padded.append(path)
            if info.padded > self.policy.mostly_padding * self.clip_samples:
                self.mostly_padding.append(path)
        if info.resampled:
            self.resampled.setdefault(info.source_rate, []).append(path)
        if info.downmixed:
            self.downmixed.append(path)
        if info.cancelled_channel is not None:
            self.cancelled_stereo.append((path, info.cancelled_channel))
        if info.clipped:
            self.clipped.append((path, info.clipped))

    def skip(self, path: str, reason: str) -> None:
        self.skipped.append((path, reason))

    def summary(self) -> str:
        rates = ", ".join(f"{len(v)} from {r} Hz" for r, v in sorted(self.resampled.items())) or "none"
        return (f"{self.split}: loaded {self.loaded}/{self.total} clips of {self.clip_samples} samples at "
                f"{self.sample_rate} Hz; padded {len(self.padded)} ({len(self.mostly_padding)} mostly padding), "
                f"cropped {len(self.cropped)}, resampled {rates}, down-mixed {len(self.downmixed)} "
                f"({len(self.cancelled_stereo)} cancelled stereo, loudest channel used), skipped {len(self.skipped)}")

    def warnings(self) -> list[str]:
        """Things a user should look at: mixed rates in a folder, clips that are mostly
        padding, cancelled stereo, skipped files (each named, first few listed)."""
        out = []
        for folder, rates in sorted(self.rates_by_folder.items()):
            if len(rates) > 1:
                desc = ", ".join(f"{n} at {r} Hz" for r, n in sorted(rates.items()))
                out.append(f"mixed sample rates in folder {folder!r}: {desc}")
        if self.mostly_padding:
            out.append(f"{len(self.mostly_padding)} clip(s) are more than {self.policy.mostly_padding:.0%} padding "
                       f"(shorter than half the clip): {_first(self.mostly_padding)}")
        if self.cancelled_stereo:
            out.append(f"{len(self.cancelled_stereo)} stereo clip(s) cancelled when averaged (phase-inverted "
                       f"channels?); the loudest channel was used: {_first([p for p, _ in self.cancelled_stereo])}")
        if self.clipped:
            out.append(f"{len(self.clipped)} float file(s) held samples outside [-1, 1], clipped to [-1, 1] "
                       f"(a gain error?): {_first([f'{p} ({n} samples)' for p, n in self.clipped])}")
        for path, reason in self.skipped:
            out.append(f"skipped {path}: {reason}")
        return out


def _first(items: list[str], k: int = 5) -> str:
    more = f" (+{len(items) - k} more)" if len(items) > k else ""
    return ", ".join(items[:k]) + more
