"""Loaders for real datasets that users point at on disk (no download unless asked).

* Google Speech Commands v1/v2 (Warden 2018): ``<root>/<word>/<speaker>_nohash_<n>.wav``
  with the official ``validation_list.txt`` / ``testing_list.txt`` splits, which are
  speaker-disjoint by construction (hash of the speaker id). This is the GN-FT paper's
  dataset (SCD v1, 10 keywords).
* Free Spoken Digit-style folders: ``<root>/<digit>_<speaker>_<index>.wav`` (8 kHz); the
  split is by speaker (a list of test speakers) so it stays speaker-disjoint.

Both return a manifest with the columns of the embedded dataset (path, label, speaker,
split) so the rest of the pipeline cannot tell them apart.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from .synth import KEYWORDS

FSDD_CLASSES = tuple(str(d) for d in range(10))


def speech_commands_manifest(root: str | os.PathLike, words: tuple[str, ...] = KEYWORDS) -> pd.DataFrame:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Speech Commands folder {root} does not exist (download it first, e.g. "
                                "torchaudio.datasets.SPEECHCOMMANDS(download=True), then point here)")

    def _list(name: str) -> set[str]:
        f = root / name
        return set(f.read_text().split()) if f.exists() else set()

    val, test = _list("validation_list.txt"), _list("testing_list.txt")
    rows = []
    for word in words:
        folder = root / word
        if not folder.is_dir():
            raise FileNotFoundError(f"Speech Commands folder {root} has no sub-folder {word!r}")
        for f in sorted(folder.glob("*.wav")):
            rel = f"{word}/{f.name}"
            split = "test" if rel in test else "val" if rel in val else "train"
            rows.append(dict(path=rel, label=word, speaker=f.name.split("_nohash_")[0], split=split))
    if not rows:
        raise FileNotFoundError(f"no wav files found under {root} for words {list(words)}")
    return pd.DataFrame(rows)


def fsdd_manifest(root: str | os.PathLike, test_speakers: tuple[str, ...] | None = None,
                  val_speakers: tuple[str, ...] | None = None, seed: int = 0) -> pd.DataFrame:
    """Free Spoken Digit layout. Without explicit speaker lists, one speaker goes to test
    and one to validation, chosen with ``seed`` (speaker-disjoint, unlike FSDD's own
    index-based split)."""
    root = Path(root)
    files = sorted(root.glob("*.wav"))
    if not files:
        raise FileNotFoundError(f"no wav files found in {root} (expected <digit>_<speaker>_<index>.wav)")
    rows = []
    for f in files:
        parts = f.stem.split("_")
        if len(parts) != 3 or parts[0] not in FSDD_CLASSES:
            raise ValueError(f"file name {f.name} does not follow <digit>_<speaker>_<index>.wav")
        rows.append(dict(path=f.name, label=parts[0], speaker=parts[1]))
    df = pd.DataFrame(rows)
    speakers = sorted(df["speaker"].unique())
    if test_speakers is None or val_speakers is None:
        if len(speakers) < 3:
            raise ValueError(f"need at least 3 speakers for a speaker-disjoint split, found {speakers}")
        perm = list(np.random.default_rng(seed).permutation(speakers))
        test_speakers = test_speakers or (perm[0],)
        val_speakers = val_speakers or (perm[1],)
    df["split"] = np.where(df["speaker"].isin(test_speakers), "test",
                           np.where(df["speaker"].isin(val_speakers), "val", "train"))
    return df
