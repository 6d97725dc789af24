"""Waveform utilities: checked I/O with soundfile, fixed-length framing, resampling, SNR.

Why soundfile: torchaudio >= 2.9 routes ``load``/``save`` through torchcodec, which this
project does not install; soundfile (libsndfile) is small, reads every wav variant and
lets us give errors that name the offending file.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF


class AudioFileError(ValueError):
    """A wav that is missing, unreadable, empty or at the wrong sample rate; the message names it."""


class MissingAudioFileError(AudioFileError, FileNotFoundError):
    """An audio file (or its folder) that does not exist: an :class:`AudioFileError` that is
    also a ``FileNotFoundError`` (soundfile would only say "System error.")."""


def read_audio_counted(path: str | os.PathLike) -> tuple[np.ndarray, int, int]:
    """:func:`read_audio` plus the number of samples that were clipped to [-1, 1]."""
    path = Path(path)
    if not path.exists():
        where = "" if path.parent.is_dir() else f" (its folder {path.parent} does not exist either)"
        raise MissingAudioFileError(f"audio file {path} does not exist{where}")
    if path.is_dir():
        raise AudioFileError(f"audio file {path} is a directory, not a file")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises RuntimeError/LibsndfileError/TypeError
        raise AudioFileError(f"cannot read audio file {path}: {exc}") from exc
    if data.size == 0:
        raise AudioFileError(f"audio file {path} is empty (0 samples)")
    if not np.all(np.isfinite(data)):
        raise AudioFileError(f"audio file {path} contains NaN or infinite samples")
    over = np.abs(data) > 1.0  # only float files can hold these: every integer format maps into [-1, 1]
    n_clipped = int(np.count_nonzero(over))
    if n_clipped:
        np.clip(data, -1.0, 1.0, out=data)
    return data, int(sr), n_clipped


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read any format soundfile knows as float32 ``(frames, channels)`` plus its rate.

    The lower-level reader under :func:`read_wav`: it keeps the channels so a caller can
    choose how to down-mix (see :mod:`bdlib.data.clips`), and it rejects missing,
    unreadable, empty and non-finite files with an :class:`AudioFileError` that names the
    file. Float samples outside [-1, 1] (a float wav at 5.0) are clipped to [-1, 1], as
    every waveform in the pipeline is assumed to be; :func:`read_audio_counted` also
    returns how many were, and :func:`bdlib.data.audioset.load_split` lists such files in
    its report's ``clipped``.
    """
    data, sr, _ = read_audio_counted(path)
    return data, sr


def read_wav(path: str | os.PathLike, expected_sr: int | None = None, *, resample: bool = False) -> np.ndarray:
    """Read a mono float32 waveform in [-1, 1].

    Multi-channel files are averaged to mono. A file at a rate other than ``expected_sr``
    is an error unless ``resample`` is set, because a silently wrong rate shifts every
    frequency-domain trigger (an ultrasonic trigger vanishes below 22.05 kHz).
    """
    path = Path(path)
    data, sr = read_audio(path)
    wav = data.mean(axis=1)
    if expected_sr is not None and sr != expected_sr:
        if not resample:
            raise AudioFileError(f"audio file {path} has sample rate {sr} Hz, expected {expected_sr} Hz")
        wav = resample_np(wav, sr, expected_sr)
    if not np.all(np.isfinite(wav)):
        raise AudioFileError(f"audio file {path} contains NaN or infinite samples")
    return wav.astype(np.float32)


def write_wav(path: str | os.PathLike, wav: np.ndarray, sr: int) -> None:
    """Write 16-bit PCM atomically (temp file + rename), so an interrupt never leaves a
    truncated wav that a later run would trust."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    sf.write(str(tmp), np.clip(wav, -1.0, 1.0), sr, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)


def resample_np(wav: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Band-limited resampling (torchaudio's windowed sinc) of one or a batch of waveforms,
    returned as float32.

    Why float64 inside: the sinc filter is a convolution that torch runs through MKL, whose
    kernel (SSE4.2, AVX2, AVX-512, chosen by the CPU) sums in a different order, so float32
    outputs differ in their last bits from one CPU to another, and after 16-bit quantisation
    whole wavs differ. With float32 the embedded default set got 4 different ids on one host
    under ``MKL_ENABLE_INSTRUCTIONS`` = SSE4_2 / AVX2 / AVX512 and ``MKL_CBWR=COMPATIBLE``
    (84 to 1 064 of its 2 500 wavs changed); computed in float64 and rounded once to float32,
    all four gave one id (README, "Synthesis is bit-reproducible"). About 3 ms more per clip.
    """
    if orig_sr == new_sr:
        return np.asarray(wav, dtype=np.float32)
    out = AF.resample(torch.as_tensor(np.asarray(wav, dtype=np.float64)), orig_sr, new_sr)
    return out.numpy().astype(np.float32)


def fit_length(wav: np.ndarray, length: int, onset: int = 0) -> np.ndarray:
    """Place ``wav`` at sample ``onset`` of a zero buffer of ``length`` samples (cropping
    whatever does not fit). Used to pad/crop speech to the 1 s clips of Speech Commands."""
    out = np.zeros(length, dtype=np.float32)
    onset = int(np.clip(onset, 0, max(length - 1, 0)))
    n = min(len(wav), length - onset)
    out[onset : onset + n] = wav[:n]
    return out


def rms(x: np.ndarray, axis=-1) -> np.ndarray:
    return np.sqrt(np.mean(np.square(x, dtype=np.float64), axis=axis))


def snr_db(clean: np.ndarray, perturbed: np.ndarray) -> np.ndarray:
    """Signal-to-trigger ratio 10·log10(‖x‖² / ‖x' − x‖²) per clip (last axis = time).

    This is the usual stealthiness measure of audio triggers (e.g. FlowMur mixes its
    trigger at 30 dB). Returns +inf where the clip is unchanged.
    """
    clean = np.asarray(clean, dtype=np.float64)
    noise = np.asarray(perturbed, dtype=np.float64) - clean
    p_sig = np.sum(clean**2, axis=-1)
    p_noise = np.sum(noise**2, axis=-1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(p_sig / p_noise)


def scale_to_snr(clean: np.ndarray, trigger: np.ndarray, snr: float) -> np.ndarray:
    """Scale ``trigger`` so that ``clean + trigger`` has the requested SNR (dB) per clip."""
    p_sig = np.sum(np.square(clean, dtype=np.float64), axis=-1, keepdims=True)
    p_trig = np.sum(np.square(trigger, dtype=np.float64), axis=-1, keepdims=True)
    gain = np.sqrt(p_sig / (np.maximum(p_trig, 1e-20) * 10 ** (snr / 10.0)))
    return (trigger * gain).astype(np.float32)


def dbfs(x: np.ndarray, axis=-1) -> np.ndarray:
    """Loudness as RMS relative to full scale (dBFS), as pydub measures it (DABA's unit)."""
    with np.errstate(divide="ignore"):
        return 20.0 * np.log10(rms(x, axis=axis))


def set_dbfs(x: np.ndarray, level: float) -> np.ndarray:
    """Scale ``x`` (last axis = time) to an RMS loudness of ``level`` dBFS."""
    gain = 10 ** (level / 20.0) / np.maximum(rms(x), 1e-12)
    return (np.asarray(x) * np.expand_dims(gain, -1)).astype(np.float32)


def overlay(waves: np.ndarray, trigger: np.ndarray, starts: np.ndarray | int = 0) -> np.ndarray:
    """Add ``trigger`` (1-D, or one row per clip) into each clip at ``starts`` and clip to
    [-1, 1]; the part that runs past the clip end is dropped (pydub's ``overlay``)."""
    waves = np.asarray(waves, dtype=np.float32)
    out = waves.copy()
    n = waves.shape[-1]
    trig = np.broadcast_to(np.asarray(trigger, dtype=np.float32), (len(waves), np.shape(trigger)[-1]))
    for i, s in enumerate(np.broadcast_to(np.asarray(starts, dtype=int), (len(waves),))):
        m = min(trig.shape[-1], n - s)
        out[i, s : s + m] += trig[i, :m]
    return np.clip(out, -1.0, 1.0)
