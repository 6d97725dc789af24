"""The embedded eSpeak keyword set as a data source (built on first use, offline).

Why its id is not a manifest hash: the set is a pure function of its sizes and seed
(see :mod:`bdlib.data.synth`), its files are verified against stored sha256s, and the id
``embedded-<train>-<val>-<test>-t<takes>-seed<seed>`` is the one every existing store
was keyed with, so keeping it keeps those stores valid.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..registry import check_choice
from .source import DataSource, default_data_root
from .synth import KEYWORDS, ensure_embedded_dataset

# (train speakers, val speakers, test speakers, takes per word) of the profiles' sizes
EMBEDDED_SIZES = {"smoke": (32, 10, 16, 1), "default": (160, 30, 60, 1), "paper": (1200, 150, 250, 2)}


@dataclass
class EmbeddedConfig:
    """``size`` picks a preset of :data:`EMBEDDED_SIZES` ("default" when None); explicit
    counts override the preset's."""

    size: str | None = None
    speakers_train: int | None = None
    speakers_val: int | None = None
    speakers_test: int | None = None
    takes_per_word: int | None = None
    seed: int = 0

    def __post_init__(self):
        if self.size is not None:
            check_choice(self.size, tuple(EMBEDDED_SIZES), "embedded size")
        for name, value in zip(("speakers_train", "speakers_val", "speakers_test", "takes_per_word"), self.counts()):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"embedded option {name} must be a positive integer, got {value!r}")

    def counts(self) -> tuple:
        preset = EMBEDDED_SIZES[self.size or "default"]
        given = (self.speakers_train, self.speakers_val, self.speakers_test, self.takes_per_word)
        return tuple(p if g is None else g for p, g in zip(preset, given))


class EmbeddedSource(DataSource):
    """Synthetic Speech-Commands-style keywords (:mod:`bdlib.data.synth`).

    ``root`` is the folder that holds embedded sets (default ``<data root>/embedded``);
    this set lives in ``<root>/<id>`` (a root already named ``<id>`` is used as is).
    """

    name = "embedded"
    Config = EmbeddedConfig

    def resolve_root(self, root: str | os.PathLike | None) -> Path:
        parent = default_data_root() / "embedded" if root is None else Path(root)
        return parent if parent.name == self.id else parent / self.id

    def compute_id(self) -> str:
        tr, va, te, takes = self.config.counts()
        return f"embedded-{tr}-{va}-{te}-t{takes}-seed{self.config.seed}"

    @property
    def class_names(self) -> tuple[str, ...]:
        return KEYWORDS

    def build_manifest(self) -> pd.DataFrame:
        tr, va, te, takes = self.config.counts()
        return ensure_embedded_dataset(self.root, tr, va, te, seed=self.config.seed, takes_per_word=takes,
                                       progress=self.progress)
