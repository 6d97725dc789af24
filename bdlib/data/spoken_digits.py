"""Free Spoken Digit Dataset layout: a flat folder of ``<digit>_<speaker>_<index>.<ext>``.

Why split by speaker: FSDD's own split is by recording index, so every test speaker is
also a training speaker; here the split is speaker-disjoint (explicit lists, a seeded
draw, or k-fold / leave-one-speaker-out: :mod:`bdlib.data.splits`). FSDD is recorded at
8 kHz; the loader resamples to the pipeline rate.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .source import DataSource, scan_folder
from .splits import SpeakerFolds, SpeakerSplit, assign_splits

DIGITS = tuple(str(d) for d in range(10))


@dataclass
class SpokenDigitsConfig(SpeakerSplit):
    """Speaker-split options only (see :class:`bdlib.data.splits.SpeakerSplit`); without
    any, one seeded speaker goes to test and one to validation."""


class SpokenDigitsSource(SpeakerFolds, DataSource):
    name = "spoken_digits"
    Config = SpokenDigitsConfig
    how_to_get = ("Get the Free Spoken Digit Dataset with "
                  "git clone https://github.com/Jakobovski/free-spoken-digit-dataset "
                  "and point root at its recordings/ folder.")

    @property
    def class_names(self) -> tuple[str, ...]:
        return DIGITS

    def scan(self) -> pd.DataFrame:
        """Rows (path, label, speaker) of the well-named files; the rest go to ``skipped``."""
        files, skipped = scan_folder(self.root, self.root)
        self.skipped += skipped
        rows = []
        for f in files:
            parts = f.stem.split("_")
            if len(parts) != 3 or parts[0] not in DIGITS or not parts[1]:
                self.skipped.append((f.name, "name does not follow <digit>_<speaker>_<index>.<ext>"))
                continue
            rows.append(dict(path=f.name, label=parts[0], speaker=parts[1]))
        if not rows:
            hint = (f" (did you mean {self.root / 'recordings'}?)" if (self.root / "recordings").is_dir() else "")
            raise FileNotFoundError(f"no audio files named <digit>_<speaker>_<index>.<ext> in {self.root}{hint}; "
                                    f"skipped: {self.skipped[:5]}")
        return pd.DataFrame(rows)

    def build_manifest(self) -> pd.DataFrame:
        df = self.scan()
        df["split"] = df["speaker"].map(assign_splits(df["speaker"], self.config))
        return df
