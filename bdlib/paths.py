"""Where the collection keeps its files (no heavy imports: the CLI and runner use it)."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_root() -> Path:
    """``$BDLIB_DATA`` or the repository's ``data/`` folder: the store, the embedded set,
    executed notebooks and figures of non-default runs."""
    return Path(os.environ.get("BDLIB_DATA", REPO_ROOT / "data"))
