"""Data-source registry: ``make_source(name, root, **options)``.

A new corpus is one module defining a :class:`DataSource` subclass plus one line below.
"""
from __future__ import annotations

import os

from ..registry import Registry, build_config
from .embedded_source import EMBEDDED_SIZES, EmbeddedSource
from .folder_source import FolderSource
from .source import DataSource
from .speech_commands import SpeechCommandsSource, download_speech_commands
from .splits import speaker_folds
from .spoken_digits import SpokenDigitsSource

SOURCES: Registry[type[DataSource]] = Registry("dataset")
SOURCES.add("embedded", EmbeddedSource)
SOURCES.add("speech_commands", SpeechCommandsSource)
SOURCES.add("spoken_digits", SpokenDigitsSource)
SOURCES.add("folder", FolderSource)


def make_source(name: str, root: str | os.PathLike | None = None, *, progress: bool = False, **options) -> DataSource:
    """The registered source ``name`` over ``root`` with ``options`` (its ``Config`` fields).

    Unknown names and options fail listing the valid ones; a missing root says how to get
    the data. ``progress`` shows bars while building/downloading (not part of the id).
    """
    cls = SOURCES.get(name)
    return cls(build_config(cls.Config, options, f"{name} dataset"), root, progress=progress)


__all__ = ["SOURCES", "DataSource", "EMBEDDED_SIZES", "make_source", "download_speech_commands", "speaker_folds"]
