"""A user's own clips: ``<root>/<label>/<file>.<ext>``, or a ``manifest.csv`` listing them.

Why the speaker matters: splits are speaker-disjoint (:mod:`bdlib.data.splits`), so
each file needs a speaker. It comes from ``speaker_pattern`` (a regular expression on
the file name: its ``speaker`` group, else its first group, else the whole match;
default: the part of the name before the first ``_``, else the file stem), or from a
``manifest.csv`` with columns ``path,label,speaker[,split]`` (paths relative to the
root; a ``split`` column there is used as given).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd

from .source import SPLITS, DataSource, is_audio_file, scan_folder
from .splits import SpeakerFolds, SpeakerSplit, assign_splits

MANIFEST_NAME = "manifest.csv"


@dataclass
class FolderConfig(SpeakerSplit):
    """Speaker-split options (default: a seeded 20 % of speakers test, 10 % validation),
    ``speaker_pattern`` (regex on the file name) and ``manifest`` (a csv path, relative to
    the root or absolute; default ``<root>/manifest.csv`` when present)."""

    test_fraction: float | None = 0.2
    val_fraction: float | None = 0.1
    speaker_pattern: str | None = None
    manifest: str | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.speaker_pattern is not None:
            try:
                re.compile(self.speaker_pattern)
            except re.error as exc:
                raise ValueError(f"speaker_pattern {self.speaker_pattern!r} is not a valid regular expression: "
                                 f"{exc}") from None


def speaker_from_name(name: str, pattern: re.Pattern | None) -> str | None:
    """The speaker of a file name (None when ``pattern`` does not match)."""
    if pattern is None:
        stem = PurePosixPath(name).stem
        return stem.split("_", 1)[0] if "_" in stem else stem
    m = pattern.search(name)
    if m is None:
        return None
    if "speaker" in pattern.groupindex:
        return m.group("speaker")
    return m.group(1) if pattern.groups else m.group(0)


class FolderSource(SpeakerFolds, DataSource):
    name = "folder"
    Config = FolderConfig
    how_to_get = ("Point root at a folder with one sub-folder per label (<root>/<label>/<speaker>_<n>.wav), "
                  "or at a folder holding a manifest.csv with columns path,label,speaker[,split].")

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(sorted(self.manifest()["label"].unique()))

    def manifest_file(self) -> Path | None:
        if self.config.manifest is not None:
            f = Path(self.config.manifest)
            f = f if f.is_absolute() else self.root / f
            if not f.is_file():
                raise FileNotFoundError(f"manifest file {f} does not exist")
            return f
        f = self.root / MANIFEST_NAME
        return f if f.is_file() else None

    def build_manifest(self) -> pd.DataFrame:
        mfile = self.manifest_file()
        df = self.read_user_manifest(mfile) if mfile else self.scan()
        if "split" in df.columns:
            if self.config.explicit:
                raise ValueError(f"{mfile} already assigns splits (its split column); do not also pass "
                                 "test_speakers/val_speakers/fold, or drop the column")
            return df
        df["split"] = df["speaker"].map(assign_splits(df["speaker"], self.config))
        return df

    def scan(self) -> pd.DataFrame:
        """Rows (path, label, speaker) of ``<root>/<label>/<file>``; the rest go to ``skipped``."""
        pattern = re.compile(self.config.speaker_pattern) if self.config.speaker_pattern else None
        rows = []
        for entry in sorted(self.root.iterdir()):
            rel = entry.name
            if not entry.is_dir():
                self.skipped.append((rel, "file at the top level (not in a <label>/ folder)"))
                continue
            if entry.name.startswith((".", "_")):
                self.skipped.append((rel + "/", "folder name starts with '.' or '_' (not a label)"))
                continue
            files, skipped = scan_folder(entry, self.root)
            self.skipped += skipped
            if not files:
                self.skipped.append((rel + "/", "no audio files (label dropped)"))
            for f in files:
                speaker = speaker_from_name(f.name, pattern)
                if not speaker:
                    self.skipped.append((f"{rel}/{f.name}",
                                         f"speaker_pattern {self.config.speaker_pattern!r} does not match the name"))
                    continue
                rows.append(dict(path=f"{rel}/{f.name}", label=entry.name, speaker=speaker))
        if not rows:
            raise FileNotFoundError(f"no audio files found in {self.root}/<label>/ folders; skipped: "
                                    f"{self.skipped[:5]}. {self.how_to_get}")
        return pd.DataFrame(rows)

    def read_user_manifest(self, mfile: Path) -> pd.DataFrame:
        """A user's csv, checked row by row: paths stay inside the root, files exist,
        labels and speakers are non-empty, splits are valid."""
        df = pd.read_csv(mfile, dtype=str, keep_default_na=False)
        need = ["path", "label", "speaker"]
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise ValueError(f"{mfile} lacks column(s) {missing}; it needs path,label,speaker[,split], "
                             f"has {list(df.columns)}")
        cols = need + (["split"] if "split" in df.columns else [])
        root_r = self.root.resolve()
        keep = []
        for i, row in enumerate(df[cols].itertuples(index=False)):
            where = f"{mfile.name} row {i + 1} (line {i + 2})"
            path = PurePosixPath(row.path.strip().replace("\\", "/"))
            target = (self.root / path).resolve()
            if path.is_absolute() or ".." in path.parts or (target != root_r and root_r not in target.parents):
                raise ValueError(f"{where}: path {row.path!r} escapes the dataset root {self.root}")
            if not row.label.strip() or not row.speaker.strip():
                raise ValueError(f"{where}: empty label or speaker")
            if "split" in cols and row.split not in SPLITS:
                raise ValueError(f"{where}: unknown split {row.split!r}; valid splits: {', '.join(SPLITS)}")
            if not (self.root / path).is_file():
                raise FileNotFoundError(f"{where}: file {self.root / path} does not exist")
            if not is_audio_file(path.name):
                self.skipped.append((path.as_posix(), f"extension {path.suffix or '(none)'!r} is not an audio format "
                                                      "soundfile reads"))
                continue
            keep.append({"path": path.as_posix(), "label": row.label.strip(), "speaker": row.speaker.strip(),
                         **({"split": row.split} if "split" in cols else {})})
        if not keep:
            raise ValueError(f"{mfile} lists no usable audio files")
        return pd.DataFrame(keep)
