"""The embedded default dataset: Speech-Commands-style keywords synthesised with eSpeak NG.

Why: the GN-FT paper evaluates on Google Speech Commands (SCD v1, 10 keywords, 16 kHz,
1 s clips; arXiv 2502.01152 Sec. 4.1). This module builds a look-alike offline: the same
10 keywords, many synthetic speakers (English accent × voice variant × rate × pitch),
1 s clips with a random onset and light background noise, and a *speaker-disjoint*
train/validation/test split so test accuracy measures generalisation to unseen voices.

Reproducibility: the plan (who says what, gains, onsets, noise seeds) is a pure function
of (sizes, seed), and each clip is synthesised by a freshly loaded, seeded eSpeak engine
(:mod:`bdlib.data.espeak`), so a re-synthesis on the same eSpeak build and platform gives
bit-identical wavs. The one CPU-dependent step was the resampling to 16 kHz (MKL picks its
kernel by CPU); :func:`bdlib.audio.resample_np` now computes it in float64, so MKL's
SSE4.2, AVX2 and AVX-512 paths give the same wavs (sets made before say so when loaded,
:data:`RESAMPLING` in ``synthesis.json``). Whatever was synthesised is what is used: every load verifies the wavs
against the manifest's sha256 column, and the dataset's id carries a hash of that column
(:func:`content_hash`), so results name the exact data they came from.

Integrity (no self-healing): a set whose wavs no longer match its manifest is never
re-synthesised in place (that would silently make a different dataset under the same
name): :func:`ensure_embedded_dataset` raises :class:`DatasetIntegrityError` naming the
files and how to rebuild. Only an *unfinished* synthesis is resumed: while it runs the
folder holds ``manifest.partial.csv`` (the plan) and no ``manifest.csv``; the manifest is
written atomically once every wav exists, so a killed run never leaves a manifest that a
later run trusts.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm  # text bars: readable in papermill outputs too

from ..audio import fit_length, resample_np, write_wav
from ..filelocks import held, pid_alive
from . import espeak
from .espeak import ACCENTS, VARIANTS, espeak_version, synth_in_workers, synth_rows

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
SAMPLE_RATE = 16_000
CLIP_SAMPLES = 16_000
MANIFEST = "manifest.csv"
PARTIAL = "manifest.partial.csv"  # the plan, present only while a synthesis is unfinished
SYNTHESIS_INFO = "synthesis.json"
# recorded in SYNTHESIS_INFO: resample_np computes in float64, so the wavs do not depend on the CPU's MKL kernel
RESAMPLING = "float64"
SPLITS = ("train", "val", "test")
# below this many clips, synthesise in this process (starting workers costs ~0.3 s each)
MIN_CLIPS_FOR_WORKERS = 200
_CHUNK = 50


class DatasetIntegrityError(RuntimeError):
    """The embedded dataset on disk is not the one its manifest describes (or not this plan's)."""


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
    """Turn eSpeak's raw output into a 1 s, 16 kHz clip as the plan row prescribes (gain,
    onset and noise all come from the row: no unseeded randomness)."""
    if raw.dtype == np.int16:
        raw = raw.astype(np.float32) / 32768.0
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


def content_hash(manifest: pd.DataFrame) -> str:
    """sha256 (hex) over the manifest's sha256 column, in manifest order: names the exact
    wavs of a set (the embedded source's id ends with its first 12 hex digits)."""
    return hashlib.sha256("\n".join(manifest["sha256"].astype(str)).encode()).hexdigest()


def _write_csv_atomically(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


def _remove_stale_temp_files(root: Path) -> None:
    """Temp files of atomic writes that a killed run left behind (``.name.tmpPID``).

    Only those whose writer is dead: a live writer's temp file vanishing under it is the
    ``FileNotFoundError`` two concurrent synthesisers of one set used to hit.
    """
    for f in root.rglob(".*.tmp*"):
        pid = f.name.rpartition(".tmp")[2]
        if f.is_file() and not (pid.isdigit() and pid_alive(int(pid))):
            f.unlink(missing_ok=True)


def synthesis_lock(root: Path) -> Path:
    """The lock file that serialises building the set under ``root`` (beside it, not in it)."""
    return root.parent / ".locks" / f"{root.name}.lock"


def synthesize_dataset(root: str | os.PathLike, plan: pd.DataFrame, workers: int | None = None,
                       progress: bool = True) -> pd.DataFrame:
    """Synthesise every clip of ``plan`` under ``root`` and write ``manifest.csv``.

    Resumable and kill-safe: ``manifest.partial.csv`` (the plan) marks the folder as
    unfinished, wavs are written atomically, clips whose wav exists are skipped, and the
    manifest (with sha256s) is written atomically last, then the marker removed.

    Parallelism uses worker subprocesses (``python -m bdlib.data.espeak``), not a
    multiprocessing pool, so it works from scripts without an ``if __name__ ==
    "__main__"`` guard; ``workers=1`` (or a small plan) synthesises in this process. Each
    clip comes from a freshly loaded, seeded engine, so the result does not depend on
    the number of workers or on the order. Two processes given the same ``root`` take
    turns (an OS lock beside the folder): the second waits, then finds the wavs written.
    """
    root = Path(root)
    with held(synthesis_lock(root), f"the embedded set {root}"):
        root.mkdir(parents=True, exist_ok=True)
        _write_csv_atomically(plan, root / PARTIAL)
        _remove_stale_temp_files(root)
        todo = [r for r in plan.to_dict("records") if not (root / r["path"]).exists()]
        workers = workers or min(2, os.cpu_count() or 1)
        chunks = [todo[i : i + _CHUNK] for i in range(0, len(todo), _CHUNK)]
        if workers > 1 and len(todo) >= MIN_CLIPS_FOR_WORKERS:
            results = synth_in_workers(chunks, workers)
        else:
            results = map(synth_rows, chunks)
        bar = tqdm(total=len(todo), desc="synthesising clips", disable=not progress or not todo)
        try:
            for chunk, chunk_results in zip(chunks, results):
                for row, (raw, sr) in zip(chunk, chunk_results):
                    if raw.size == 0:
                        raise RuntimeError(f"eSpeak produced no audio for {row['label']!r} / "
                                           f"{row['accent']}+{row['variant']}")
                    write_wav(root / row["path"], render_clip(raw, sr, pd.Series(row)), SAMPLE_RATE)
                bar.update(len(chunk))
        finally:
            bar.close()
            if hasattr(results, "close"):
                results.close()  # stops worker subprocesses on an error or interrupt
        manifest = plan.copy()
        manifest["sha256"] = [sha256_file(root / p) for p in manifest["path"]]
        info = {"engine": espeak_version(), "method": "fresh eSpeak engine per clip, seeded with the clip's noise_seed",
                "bit_reproducible": espeak.REPRODUCIBLE, "resampling": RESAMPLING, "clips": len(manifest),
                "content_sha256": content_hash(manifest)}
        (root / SYNTHESIS_INFO).write_text(json.dumps(info, indent=1) + "\n")
        _write_csv_atomically(manifest, root / MANIFEST)
        (root / PARTIAL).unlink(missing_ok=True)
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


def _same_plan(table: pd.DataFrame, plan: pd.DataFrame) -> bool:
    if len(table) != len(plan) or any(c not in table.columns for c in plan.columns):
        return False
    for c in plan.columns:
        a, b = table[c].to_numpy(), plan[c].to_numpy()
        if plan[c].dtype.kind == "f":
            if not np.allclose(a.astype(float), b.astype(float), rtol=0, atol=1e-9):
                return False
        elif list(map(str, a)) != list(map(str, b)):
            return False
    return True


def _rebuild_text(root: Path, rebuild_command: str | None) -> str:
    how = f"delete the folder {root} and load the dataset again"
    if rebuild_command:
        how += f" (e.g. `{rebuild_command}` after deleting it)"
    return f"To rebuild the whole set, {how}; the rebuilt set gets a new id, so no cached artifact of the old one is reused."


def _integrity_error(root: Path, manifest: pd.DataFrame, problems: list[str], rebuild_command: str | None,
                     show: int = 5) -> DatasetIntegrityError:
    missing = sum(p.startswith("missing") for p in problems)
    altered = len(problems) - missing
    listed = "\n".join(f"  {p.split(': ', 1)[0]}: {Path(p.split(': ', 1)[1]).relative_to(root).as_posix()}"
                       for p in problems[:show])
    more = f"\n  ... and {len(problems) - show} more" if len(problems) > show else ""
    return DatasetIntegrityError(
        f"embedded dataset {root} failed its integrity check: {len(problems)} of {len(manifest)} wav files "
        f"differ from {MANIFEST} ({altered} altered, {missing} missing):\n{listed}{more}\n"
        f"It is not re-synthesised in place (that would make a different dataset under the same name). "
        + _rebuild_text(root, rebuild_command))


def _warn_if_cpu_specific(root: Path) -> None:
    """Say so when a set predates CPU-independent resampling: it is still valid (its id names
    its wavs), but another machine synthesises other wavs for the same plan."""
    try:
        info = json.loads((root / SYNTHESIS_INFO).read_text())
    except (OSError, ValueError):
        info = {}
    if info.get("resampling") != RESAMPLING:
        warnings.warn(f"the embedded set {root} was synthesised by an older bdlib that resampled in float32, so its "
                      f"wavs (and its id) depend on the CPU that made them; it is used as it is. To get the wavs every "
                      f"CPU makes, delete the folder and load the set again (it gets a new id).", stacklevel=3)


def ensure_embedded_dataset(root: str | os.PathLike, n_train: int, n_val: int, n_test: int, seed: int,
                            takes_per_word: int = 1, verify: bool = True, progress: bool = True,
                            workers: int | None = None, rebuild_command: str | None = None) -> pd.DataFrame:
    """Return the manifest of the set under ``root``, synthesising it if it is not there.

    * ``manifest.csv`` present: it must be this plan's and (``verify``) every wav must
      match its sha256, else :class:`DatasetIntegrityError` (nothing is deleted or rebuilt).
    * only ``manifest.partial.csv`` present (an interrupted synthesis): resumed; if it
      records another plan, that plan's wavs are removed and synthesis restarts.
    * neither, but wav files present: :class:`DatasetIntegrityError` (unknown provenance).
    * empty or missing folder: synthesised.

    ``rebuild_command`` is quoted in error messages as the way to rebuild the set.
    Concurrent calls for one ``root`` (parallel tests, two notebooks) take turns: one
    synthesises, the others wait and then verify what it wrote.
    """
    root = Path(root)
    plan = plan_dataset(n_train, n_val, n_test, seed, takes_per_word)
    with held(synthesis_lock(root), f"the embedded set {root}"):
        mpath, ppath = root / MANIFEST, root / PARTIAL
        if mpath.exists():
            try:
                manifest = pd.read_csv(mpath)
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
                raise DatasetIntegrityError(
                    f"{mpath} is unreadable ({e}). " + _rebuild_text(root, rebuild_command)) from None
            if "sha256" not in manifest.columns or not _same_plan(manifest, plan):
                raise DatasetIntegrityError(
                    f"{mpath} does not describe the embedded set of sizes ({n_train}, {n_val}, {n_test}), "
                    f"{takes_per_word} take(s) and seed {seed} as this version of bdlib plans it (built by another "
                    f"version, or edited). " + _rebuild_text(root, rebuild_command))
            if verify:
                problems = verify_dataset(root, manifest)
                if problems:
                    raise _integrity_error(root, manifest, problems, rebuild_command)
            ppath.unlink(missing_ok=True)  # left by a run killed between writing the manifest and removing it
            _warn_if_cpu_specific(root)
            return manifest
        if ppath.exists():
            try:
                partial = pd.read_csv(ppath)
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
                partial = None
            if partial is None or not _same_plan(partial, plan):  # another plan's unfinished run: start over
                for p in ([] if partial is None or "path" not in partial else partial["path"]):
                    (root / str(p)).unlink(missing_ok=True)
                if partial is None:
                    for f in root.rglob("*.wav"):
                        f.unlink()
        elif root.is_dir() and next(root.rglob("*.wav"), None) is not None:
            raise DatasetIntegrityError(
                f"{root} holds wav files but neither {MANIFEST} nor {PARTIAL}, so they cannot be trusted as the "
                f"embedded set (left by an older bdlib or copied in by hand). " + _rebuild_text(root, rebuild_command))
        return synthesize_dataset(root, plan, workers=workers, progress=progress)
