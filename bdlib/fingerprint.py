"""Code fingerprints: a short hash of the source code that produced an artifact.

Put ``code_fingerprint(SomeAttack)`` into a store config and the artifact's key changes
when that code changes, so a stale artifact is never reused after an edit.

What is hashed: the *whole source file* of the module that defines each object given
(a class or function counts as its module's file, a module as its file, a path as that
file; a directory as every ``*.py`` under it, with paths relative to it). Whole files,
not ``inspect.getsource`` of one object, because an object's behaviour depends on its
module's helpers and constants.

Policy: **any byte change counts** — code, comments, docstrings, whitespace — except line
endings: CRLF and LF hash alike, so a Windows checkout gives the same fingerprint. A
spurious change only costs a recomputation; a missed one would reuse a stale artifact.
No path, module name, time or machine detail enters the hash, so it is the same in every
process, on every machine and for a copy of a file in another directory; and it does not
depend on the order or repetition of the objects given.

Per-file digests are cached by (path, mtime, ctime, size, inode); a file modified within
the last two seconds is not cached (its timestamp could repeat on a coarse clock).
"""
from __future__ import annotations

import hashlib
import inspect
import os
import time
import types
from pathlib import Path
from typing import Any

__all__ = ["code_fingerprint", "module_fingerprint", "file_digest", "source_files"]

DIGEST_CHARS = 16
_RACY_S = 2.0
_cache: dict[tuple, str] = {}


def file_digest(path: str | os.PathLike) -> str:
    """Full sha256 (hex) of a file's bytes, CRLF normalised to LF."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)
    cached = _cache.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256(p.read_bytes().replace(b"\r\n", b"\n")).hexdigest()
    if time.time() - max(st.st_mtime, st.st_ctime) > _RACY_S:
        _cache[key] = digest
    return digest


def source_files(obj: Any) -> list[Path]:
    """The source file(s) an object stands for (see the module docstring)."""
    if isinstance(obj, (str, os.PathLike)):
        p = Path(obj)
        if p.is_dir():
            return sorted(p.rglob("*.py"))
        if not p.is_file():
            raise FileNotFoundError(f"code_fingerprint: no such file {p}")
        return [p]
    if not isinstance(obj, (types.ModuleType, type)) and not callable(obj):
        obj = type(obj)  # an instance stands for its class
    obj = inspect.unwrap(obj) if callable(obj) and not isinstance(obj, type) else obj
    if not isinstance(obj, types.ModuleType):
        module = inspect.getmodule(obj)
        if module is None:
            raise TypeError(f"code_fingerprint: cannot tell which module defines {obj!r}")
        obj = module
    file = getattr(obj, "__file__", None)
    if not file or not file.endswith(".py") or not os.path.isfile(file):
        raise TypeError(f"code_fingerprint: {obj.__name__!r} has no Python source file "
                        "(built-in, extension module, or defined interactively)")
    return [Path(file)]


def _combine(objs: tuple) -> str:
    digests = set()
    for obj in objs:
        if isinstance(obj, (str, os.PathLike)) and Path(obj).is_dir():
            root = Path(obj)
            for f in source_files(root):  # a directory: its layout matters too
                digests.add(hashlib.sha256(f"{f.relative_to(root).as_posix()}\0{file_digest(f)}".encode()).hexdigest())
        else:
            digests.update(file_digest(f) for f in source_files(obj))
    if not digests:
        raise ValueError("code_fingerprint: nothing to fingerprint")
    return hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest()[:DIGEST_CHARS]


def code_fingerprint(*objs: Any) -> str:
    """A short (16 hex) sha256 over the source files of the modules defining ``objs``.

    ``objs`` may be modules, classes, functions/methods, instances (their class), file
    paths or directories. Order and repetition do not matter.
    """
    return _combine(objs)


def module_fingerprint(module_or_path: types.ModuleType | str | os.PathLike) -> str:
    """Fingerprint of one module (or source file path); same as ``code_fingerprint(module)``."""
    return _combine((module_or_path,))
