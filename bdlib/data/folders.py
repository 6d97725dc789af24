"""Manifest functions of the first real-data loaders, kept for their callers.

The sources in :mod:`bdlib.data.sources` (``speech_commands``, ``spoken_digits``) do the
work; these wrappers keep the old signatures and the old strictness (a misnamed audio
file in an FSDD folder is an error here, where the source just lists it as skipped).
"""
from __future__ import annotations

import os

import pandas as pd

from .speech_commands import SpeechCommandsConfig, SpeechCommandsSource
from .spoken_digits import DIGITS, SpokenDigitsConfig, SpokenDigitsSource
from .synth import KEYWORDS

FSDD_CLASSES = DIGITS


def speech_commands_manifest(root: str | os.PathLike, words: tuple[str, ...] = KEYWORDS) -> pd.DataFrame:
    return SpeechCommandsSource(SpeechCommandsConfig(words=words), root).manifest()


def fsdd_manifest(root: str | os.PathLike, test_speakers: tuple[str, ...] | None = None,
                  val_speakers: tuple[str, ...] | None = None, seed: int = 0) -> pd.DataFrame:
    """Free Spoken Digit layout. Without explicit speaker lists, one speaker goes to test
    and one to validation, chosen with ``seed`` (speaker-disjoint)."""
    config = SpokenDigitsConfig(test_speakers=test_speakers, val_speakers=val_speakers, seed=seed)
    src = SpokenDigitsSource(config, root)
    manifest = src.manifest()
    misnamed = [p for p, why in src.skipped if why.startswith("name does not follow")]
    if misnamed:
        raise ValueError(f"file name(s) {misnamed} do not follow <digit>_<speaker>_<index>.<ext>")
    return manifest
