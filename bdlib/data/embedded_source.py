"""The embedded eSpeak keyword set as a data source (built on first use, offline).

Its id names the exact data: ``embedded-<train>-<val>-<test>-t<takes>-seed<seed>-<hash>``
where ``<hash>`` is the first 12 hex digits of :func:`bdlib.data.synth.content_hash` (the
sha256 over the manifest's sha256 column). Every store key is built from the id, so
features, models and results computed from one synthesis are never served for another
(a rebuilt or differently synthesised set gets a new id), and a reported id says which
wavs a number came from.

The set is stored in the folder named by the size/seed part only,
``<root>/embedded-<train>-<val>-<test>-t<takes>-seed<seed>`` (:attr:`EmbeddedSource.folder_name`):
the folder has to be found before the wavs, hence their hash, are known. Computing the id
loads (and, the first time, synthesises) the set; ``folder_name`` does not.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..registry import Checked, check_choice, knob
from .source import DataSource, default_data_root
from .synth import KEYWORDS, content_hash, ensure_embedded_dataset

# (train speakers, val speakers, test speakers, takes per word) of the profiles' sizes
# (train, validation, test speakers, takes per word); "budget": 12x the default's training
# speakers, so that 5 % of its training set is 960 clean clips (the budget ablation, bdlib.budget)
EMBEDDED_SIZES = {"smoke": (32, 10, 16, 1), "default": (160, 30, 60, 1), "budget": (1920, 30, 60, 1),
                  "paper": (1200, 150, 250, 2)}
CONTENT_HASH_CHARS = 12


@dataclass
class EmbeddedConfig(Checked):
    """``size`` picks a preset of :data:`EMBEDDED_SIZES` ("default" when None); explicit
    counts override the preset's."""

    size: str | None = None
    speakers_train: int | None = knob(None, "[1, inf)")
    speakers_val: int | None = knob(None, "[1, inf)")
    speakers_test: int | None = knob(None, "[1, inf)")
    takes_per_word: int | None = knob(None, "[1, inf)")
    seed: int = 0

    def __post_init__(self):
        if self.size is not None:
            check_choice(self.size, tuple(EMBEDDED_SIZES), "embedded size")
        super().__post_init__()

    def counts(self) -> tuple:
        preset = EMBEDDED_SIZES[self.size or "default"]
        given = (self.speakers_train, self.speakers_val, self.speakers_test, self.takes_per_word)
        return tuple(p if g is None else g for p, g in zip(preset, given))


class EmbeddedSource(DataSource):
    """Synthetic Speech-Commands-style keywords (:mod:`bdlib.data.synth`).

    ``root`` is the folder that holds embedded sets (default ``<data root>/embedded``);
    this set lives in ``<root>/<folder_name>`` (a root already named ``<folder_name>`` is
    used as is). ``id`` is ``<folder_name>-<content hash>`` (see the module doc).
    """

    name = "embedded"
    Config = EmbeddedConfig

    @property
    def folder_name(self) -> str:
        """``embedded-<train>-<val>-<test>-t<takes>-seed<seed>``: the set's folder, known without its data."""
        tr, va, te, takes = self.config.counts()
        return f"embedded-{tr}-{va}-{te}-t{takes}-seed{self.config.seed}"

    def resolve_root(self, root: str | os.PathLike | None) -> Path:
        parent = default_data_root() / "embedded" if root is None else Path(root)
        return parent if parent.name == self.folder_name else parent / self.folder_name

    def compute_id(self) -> str:
        return f"{self.folder_name}-{content_hash(self.manifest())[:CONTENT_HASH_CHARS]}"

    @property
    def class_names(self) -> tuple[str, ...]:
        return KEYWORDS

    def rebuild_command(self) -> str | None:
        """The CLI line that rebuilds this set in the default data folder, when there is one."""
        counts = self.config.counts()
        for profile, preset in EMBEDDED_SIZES.items():
            if counts == preset and self.config.seed == 0 and self.root == default_data_root() / "embedded" / self.folder_name:
                return f"python -m bdlib data --profile {profile}"
        return None

    def build_manifest(self) -> pd.DataFrame:
        tr, va, te, takes = self.config.counts()
        return ensure_embedded_dataset(self.root, tr, va, te, seed=self.config.seed, takes_per_word=takes,
                                       progress=self.progress, rebuild_command=self.rebuild_command())
