"""The data-source contract: what the pipeline needs from any corpus.

Why a contract: the experiment pipeline must not care whether clips come from the
embedded eSpeak set, Google Speech Commands, Free Spoken Digit or a user's own folder.
A source answers four questions — which clips (``manifest()``), which classes, at which
rate, and under which stable ``id`` its artifacts are stored — and a new corpus is one
file defining a :class:`DataSource` subclass plus one registry line in
:mod:`bdlib.data.sources`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from abc import ABC, abstractmethod
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

import pandas as pd
import soundfile as sf

from ..paths import data_root as default_data_root  # noqa: F401 (the embedded set's default home)
from .audioset import AudioSet, load_split
from .clips import ClipPolicy

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ("path", "label", "speaker", "split")

# soundfile format names whose usual file extensions differ from the name (RAW is left
# out: headerless files cannot be read without being told their rate and encoding)
_EXTRA_EXTENSIONS = {"AIFF": ("aif", "aifc"), "OGG": ("oga", "opus"), "NIST": ("sph",), "MAT4": ("mat",),
                     "MAT5": ("mat",), "IRCAM": ("sf",), "SVX": ("8svx", "iff"), "WAVEX": ("wav",), "MPC2K": ("snd",)}




def audio_extensions() -> frozenset[str]:
    """Lower-case extensions (no dot) of every format this soundfile build reads."""
    names = set(sf.available_formats()) - {"RAW"}
    exts = {n.lower() for n in names}
    for n in names:
        exts.update(_EXTRA_EXTENSIONS.get(n, ()))
    return frozenset(exts)


def is_audio_file(name: str) -> bool:
    """True for a file name whose extension (in any case: ``.WAV``, ``.Flac``) soundfile reads."""
    suffix = PurePosixPath(name).suffix
    return bool(suffix) and suffix[1:].lower() in audio_extensions()


def scan_folder(folder: Path, rel_to: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Audio files directly in ``folder`` (sorted) and the entries skipped, with why.

    Paths in the skip list are relative to ``rel_to`` (posix), like manifest paths.
    """
    files, skipped = [], []
    for f in sorted(folder.iterdir()):
        rel = f.relative_to(rel_to).as_posix()
        if f.name.startswith("."):
            skipped.append((rel, "hidden file"))
        elif f.is_dir():
            skipped.append((rel + "/", "sub-folder (not searched)"))
        elif not is_audio_file(f.name):
            skipped.append((rel, f"extension {f.suffix or '(none)'!r} is not an audio format soundfile reads"))
        else:
            files.append(f)
    return files, skipped


def manifest_digest(manifest: pd.DataFrame, root: Path) -> str:
    """sha256 of the manifest rows (path, label, speaker, split) plus each file's size.

    Cheap (one ``stat`` per file, no audio read) yet it changes when a file is added,
    removed, relabelled, moved to another split or rewritten at another length.
    """
    h = hashlib.sha256()
    for row in manifest[list(MANIFEST_COLUMNS)].astype(str).itertuples(index=False):
        size = (root / row.path).stat().st_size
        h.update("\t".join((*row, str(size))).encode())
        h.update(b"\n")
    return h.hexdigest()


class DataSource(ABC):
    """A corpus of labelled clips split speaker-disjointly into train/val/test.

    Contract:

    * ``name`` — the registry name; ``Config`` — a dataclass of the source's options
      (validated by :func:`bdlib.data.sources.make_source`; unknown options list the valid ones).
    * ``root`` — the folder the manifest's paths are relative to.
    * ``id`` — stable id used in every store key. On-disk corpora hash their manifest and
      file sizes (:func:`manifest_digest`), so editing the data changes the id and no stale
      artifact is served; it is computed once per instance (make a new source after
      changing the files).
    * ``class_names`` — the labels, in class-index order.
    * ``sample_rate`` — the pipeline rate the source is meant to be read at.
    * ``manifest()`` — DataFrame with columns ``path`` (relative to ``root``, posix),
      ``label``, ``speaker`` (str) and ``split`` in {train, val, test}; cached.
      Entries the source could not use are listed in ``skipped`` as (path, reason).
    * ``describe()`` — a short dict for reports.
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    sample_rate: ClassVar[int] = 16_000
    # how a user gets the data: printed when the root is missing (see how_to_get_data)
    how_to_get: ClassVar[str] = ""

    def __init__(self, config: Any, root: str | os.PathLike | None = None, *, progress: bool = False):
        self.config = config
        self.progress = progress
        self.skipped: list[tuple[str, str]] = []
        self._manifest: pd.DataFrame | None = None
        self._id: str | None = None
        self.root = self.resolve_root(root)

    # --- the root ---------------------------------------------------------------------
    def resolve_root(self, root: str | os.PathLike | None) -> Path:
        """Check that the data folder was given and exists (overridden by sources that
        have a default folder or can download)."""
        if root is None:
            raise ValueError(f"dataset {self.name!r} needs the folder holding the data: "
                             f"make_source({self.name!r}, root='/path/to/data', ...). {self.how_to_get_data(None)}")
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{self.name} data folder {root} does not exist. {self.how_to_get_data(root)}")
        return root

    def how_to_get_data(self, root: Path | None) -> str:
        """One sentence telling a user how to obtain the data (for missing-folder errors)."""
        return self.how_to_get

    # --- the contract -------------------------------------------------------------------
    @property
    def id(self) -> str:
        if self._id is None:
            self._id = self.compute_id()
        return self._id

    def compute_id(self) -> str:
        return f"{self.name}-{manifest_digest(self.manifest(), self.root)[:16]}"

    @property
    @abstractmethod
    def class_names(self) -> tuple[str, ...]:
        ...

    @abstractmethod
    def build_manifest(self) -> pd.DataFrame:
        """Scan the data (no audio read) and return the manifest; record skips in ``self.skipped``."""

    def manifest(self) -> pd.DataFrame:
        if self._manifest is None:
            self._manifest = check_manifest(self.build_manifest(), self.name)
        return self._manifest

    def describe(self) -> dict:
        m = self.manifest()
        return {"dataset": self.name, "id": self.id, "root": str(self.root), "classes": len(self.class_names),
                "clips": {s: int((m["split"] == s).sum()) for s in SPLITS},
                "speakers": {s: int(m.loc[m["split"] == s, "speaker"].nunique()) for s in SPLITS},
                "skipped": len(self.skipped), "options": dataclasses.asdict(self.config)}

    def load(self, split: str, sample_rate: int | None = None, clip_seconds: float = 1.0,
             policy: ClipPolicy | None = None, strict: bool = False, progress: bool | None = None) -> AudioSet:
        """Read one split with the clip policy (default :class:`ClipPolicy`); see
        :func:`bdlib.data.audioset.load_split`."""
        return load_split(self.manifest(), self.root, split, self.class_names, sample_rate or self.sample_rate,
                          clip_seconds, progress=self.progress if progress is None else progress,
                          policy=policy or ClipPolicy(), strict=strict)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, config={self.config})"


def check_manifest(m: pd.DataFrame, name: str) -> pd.DataFrame:
    """The contract's column and split checks, with errors naming the problem."""
    missing = [c for c in MANIFEST_COLUMNS if c not in m.columns]
    if missing:
        raise ValueError(f"{name} manifest lacks column(s) {missing}; a manifest needs {list(MANIFEST_COLUMNS)}")
    if m.empty:
        raise ValueError(f"{name} manifest is empty")
    bad = sorted(set(m["split"]) - set(SPLITS))
    if bad:
        raise ValueError(f"{name} manifest has unknown split(s) {bad}; valid splits: {', '.join(SPLITS)}")
    m = m.reset_index(drop=True)
    m["speaker"] = m["speaker"].astype(str)
    return m


def as_name_tuple(value, what: str) -> tuple[str, ...] | None:
    """A list/tuple of names as a tuple of str; a bare string is an error (``'yes'`` would
    otherwise be read as the names 'y', 'e', 's')."""
    if value is None:
        return None
    if isinstance(value, str):
        raise ValueError(f"{what} must be a list of names, not the string {value!r} (did you mean [{value!r}]?)")
    try:
        return tuple(str(v) for v in value)
    except TypeError:
        raise ValueError(f"{what} must be a list of names, got {value!r}") from None
