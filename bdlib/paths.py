"""Where the collection keeps its files (no heavy imports: the CLI and runner use it), figures included:
:func:`figure_path` lives here so that :mod:`bdlib.figures` and :mod:`bdlib.plots` both read it without importing
each other (plots calls figures; figures never calls plots)."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_root() -> Path:
    """``$BDLIB_DATA`` or the repository's ``data/`` folder: the store, the embedded set,
    executed notebooks and figures of non-default runs."""
    return Path(os.environ.get("BDLIB_DATA", REPO_ROOT / "data"))


def figure_path(name: str, profile: str, dataset: str = "embedded") -> Path:
    """``figures/<name>.png`` for the committed runs (default profile, embedded data), else
    ``<data root>/figures/<profile>[-<dataset>]/<name>.png``: a run on other data or another
    budget never overwrites the committed figures."""
    if profile == "default" and dataset == "embedded":
        folder = REPO_ROOT / "figures"
    else:
        folder = data_root() / "figures" / (profile if dataset == "embedded" else f"{profile}-{dataset}")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}.png"
