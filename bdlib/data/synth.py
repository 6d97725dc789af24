"""The embedded default dataset: Speech-Commands-style keywords synthesised with eSpeak NG.

Why: the GN-FT paper evaluates on Google Speech Commands (SCD v1, 10 keywords, 16 kHz,
1 s clips; arXiv 2502.01152 Sec. 4.1). This module builds a look-alike offline: the same
10 keywords, many synthetic speakers (English accent × voice variant × rate × pitch),
1 s clips with a random onset and light background noise, and a *speaker-disjoint*
train/validation/test split so test accuracy measures generalisation to unseen voices.

Reproducibility: the plan (who says what, gains, onsets, noise seeds) is a pure
function of (sizes, seed). eSpeak's own output is not bit-reproducible across runs (its
noise sources), so the dataset is synthesised once, written as wavs, and every later
step reads the stored wavs, verified against the manifest's sha256 column.
"""
from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm  # text bars: readable in papermill outputs too

from ..audio import fit_length, resample_np, write_wav
from .espeak import ACCENTS, VARIANTS, synth_rows

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
SAMPLE_RATE = 16_000
CLIP_SAMPLES = 16_000
MANIFEST = "manifest.csv"
SPLITS = ("train", "val", "test")


def plan_speakers(n_train: int, n_val: int, n_test: int, seed: int) -> pd.DataFrame:
    """Draw synthetic speakers and assign each to exactly one split.

    Each speaker is a distinct (accent, variant) pair while there are enough pairs
    (8 × 82 = 656), so a test voice is never heard in training; rate (wpm) and pitch
    are drawn per speaker.
    """
    n = n_train + n_val + n_test
    if min(n_train, n_val, n_test) < 1:
        raise ValueError(f"every split needs at least one speaker, got train={n_train} val={n_val} test={n_test}")
    rng = np.random.default_rng(seed)
    pairs = [(a, v) for a in ACCENTS for v in VARIANTS]
    idx = rng.permutation(len(pairs))
    if n > len(pairs):  # more speakers than pairs: reuse pairs with other rate/pitch
        idx = np.concatenate([idx, rng.integers(0, len(pairs), n - len(pairs))])
    idx = idx[:n]
    splits = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * n_test)
    return pd.DataFrame(
        {
            "speaker": [f"spk{i:04d}" for i in range(n)],
            "split": splits,
            "accent": [pairs[i][0] for i in idx],
            "variant": [pairs[i][1] for i in idx],
            "rate": rng.integers(120, 201, n),
            "pitch": rng.integers(20, 81, n),
            "pitch_range": rng.integers(30, 81, n),
        }
    )


def plan_dataset(n_train: int, n_val: int, n_test: int, seed: int, takes_per_word: int = 1,
                 words: tuple[str, ...] = KEYWORDS) -> pd.DataFrame:
    """One row per clip to synthesise; a pure function of its arguments."""
    spk = plan_speakers(n_train, n_val, n_test, seed)
    rng = np.random.default_rng([seed, 1])
    rows = []
    for s in spk.itertuples(index=False):
        for label_idx, word in enumerate(words):
            for take in range(takes_per_word):
                rows.append(
                    dict(
                        path=f"{s.split}/{word}/{s.speaker}_{take}.wav",
                        label=word,
                        label_idx=label_idx,
                        speaker=s.speaker,
                        split=s.split,
                        accent=s.accent,
                        variant=s.variant,
                        rate=int(s.rate) + (int(rng.integers(-15, 16)) if take else 0),
                        pitch=int(s.pitch),
                        pitch_range=int(s.pitch_range),
                        take=take,
                        gain_db=round(float(rng.uniform(-12.0, -2.0)), 3),
                        onset_frac=round(float(rng.uniform(0.0, 1.0)), 4),
                        noise_snr_db=round(float(rng.uniform(25.0, 45.0)), 3),
                        noise_seed=int(rng.integers(0, 2**31 - 1)),
                    )
                )
    return pd.DataFrame(rows)


def _trim_silence(wav: np.ndarray, rel_threshold: float = 0.02) -> np.ndarray:
    loud = np.flatnonzero(np.abs(wav) > rel_threshold * (np.abs(wav).max() + 1e-12))
    return wav[loud[0] : loud[-1] + 1] if loud.size else wav


def render_clip(raw: np.ndarray, raw_sr: int, row) -> np.ndarray:
    """Turn eSpeak's raw output into a 1 s, 16 kHz clip as the plan row prescribes."""
    speech = resample_np(_trim_silence(raw), raw_sr, SAMPLE_RATE)
    speech = speech * (10 ** (row.gain_db / 20.0) / (np.abs(speech).max() + 1e-9))
    slack = max(CLIP_SAMPLES - len(speech), 0)
    clip = fit_length(speech, CLIP_SAMPLES, onset=int(round(row.onset_frac * slack)))
    noise = np.random.default_rng(row.noise_seed).standard_normal(CLIP_SAMPLES).astype(np.float32)
    p_speech = np.mean(speech**2) + 1e-12
    noise *= np.sqrt(p_speech / 10 ** (row.noise_snr_db / 10.0))
    return np.clip(clip + noise, -1.0, 1.0).astype(np.float32)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def synthesize_dataset(root: str | os.PathLike, plan: pd.DataFrame, workers: int | None = None,
                       progress: bool = True) -> pd.DataFrame:
    """Synthesise every clip of ``plan`` under ``root`` and write ``manifest.csv``.

    Resumable: wavs are written atomically, clips whose wav already exists are skipped,
    and the manifest (with sha256s) is written last, so an interrupted run leaves no
    manifest and the next call finishes the job.
    """
    root = Path(root)
    todo = [r for r in plan.to_dict("records") if not (root / r["path"]).exists()]
    workers = workers or min(2, os.cpu_count() or 1)
    chunks = [todo[i : i + 50] for i in range(0, len(todo), 50)]
    bar = tqdm(total=len(todo), desc="synthesising clips", disable=not progress or not todo)
    if chunks:
        # spawn: eSpeak keeps global state and torch may already be initialised here
        with mp.get_context("spawn").Pool(workers) as pool:
            for chunk, results in zip(chunks, pool.imap(synth_rows, chunks)):
                for row, (raw, sr) in zip(chunk, results):
                    if raw.size == 0:
                        raise RuntimeError(f"eSpeak produced no audio for {row['label']!r} / {row['accent']}+{row['variant']}")
                    write_wav(root / row["path"], render_clip(raw, sr, pd.Series(row)), SAMPLE_RATE)
                bar.update(len(chunk))
    bar.close()
    manifest = plan.copy()
    manifest["sha256"] = [sha256_file(root / p) for p in manifest["path"]]
    tmp = root / f".{MANIFEST}.tmp"
    manifest.to_csv(tmp, index=False)
    os.replace(tmp, root / MANIFEST)
    return manifest


def verify_dataset(root: str | os.PathLike, manifest: pd.DataFrame | None = None) -> list[str]:
    """Return a list of problems (missing or altered files, by name); empty = intact."""
    root = Path(root)
    manifest = manifest if manifest is not None else pd.read_csv(root / MANIFEST)
    problems = []
    for path, digest in zip(manifest["path"], manifest["sha256"]):
        f = root / path
        if not f.exists():
            problems.append(f"missing: {f}")
        elif sha256_file(f) != digest:
            problems.append(f"sha256 mismatch: {f}")
    return problems


def ensure_embedded_dataset(root: str | os.PathLike, n_train: int, n_val: int, n_test: int, seed: int,
                            takes_per_word: int = 1, verify: bool = True, progress: bool = True) -> pd.DataFrame:
    """Build the dataset under ``root`` unless a manifest for the same plan is already there."""
    root = Path(root)
    plan = plan_dataset(n_train, n_val, n_test, seed, takes_per_word)
    mpath = root / MANIFEST
    if mpath.exists():
        manifest = pd.read_csv(mpath)
        same_plan = list(manifest["path"]) == list(plan["path"]) and np.allclose(
            manifest["gain_db"].to_numpy(), plan["gain_db"].to_numpy()
        )
        if same_plan:
            problems = verify_dataset(root, manifest) if verify else []
            if not problems:
                return manifest
            # altered or missing clips: drop them and re-synthesise just those
            for p in problems:
                Path(p.split(": ", 1)[1]).unlink(missing_ok=True)
        mpath.unlink()
    return synthesize_dataset(root, plan, progress=progress)
