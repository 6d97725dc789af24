"""Content-addressed artifact store: every trained model and metric set, keyed by config.

Why: notebooks are re-run constantly (papermill, nbval, by hand), and several of them may
run at once. A notebook that finds the artifact of its exact configuration reuses it;
change one knob and the key changes. Each artifact is a directory ``<root>/<kind>/<hash>/``
holding ``config.json``, ``metrics.json``, for models ``weights.safetensors``, and
``manifest.json`` (the files the entry consists of, written last).

Guarantees:

* **Atomic, immutable entries.** An entry is written into a private temporary directory
  ``.tmp-<hash>-<host>-<pid>-<token>`` and renamed into place in one step, so an
  interrupted or killed run never leaves a half-written artifact that a later run would
  trust. Once a complete entry exists it is never modified: identical config means
  identical artifact by design, so a second writer of the same key discards its copy and
  keeps the existing one (``save(..., replace=True)`` swaps it instead: the old entry is
  renamed aside to ``.trash-…`` and the new one renamed in; readers retry over that window).
* **Readers tolerate concurrent writers.** ``load_metrics``, ``load_tensors`` and
  ``records`` retry briefly when an entry is being swapped; they never see a partial entry.
* **One computation per key.** ``with store.lock(kind, cfg):`` serialises the processes
  (and threads) that would compute the same artifact; see :meth:`Store.lock`.
* **Stale temporaries are cleaned.** ``.tmp-*`` / ``.trash-*`` folders whose owning process
  is dead (same host) are removed lazily, the first time a process saves into a kind, or
  explicitly with :meth:`Store.clean_stale`.
* **Portable files.** Files are mode 0644; ``metrics.json`` is strict JSON (NaN/±inf are
  written as ``null``; their positions are recorded in ``manifest.json`` so that
  ``load_metrics``/``records`` give back the original NaN/inf in Python).
* **Verified reads.** ``manifest.json`` records the key and the SHA-256 and size of every
  file of the entry (``config.json``, ``metrics.json``, ``weights.safetensors``).
  ``load_tensors``, ``load_model_into``, ``load_metrics`` and ``records`` check the whole
  entry before serving any of it: a flipped byte, a truncated or empty file, weights or
  metrics copied in from another entry, an edited ``metrics.json``, an entry directory
  renamed to another key, or unparsable JSON raise :class:`StoreIntegrityError`, which
  names the entry, the file, what is wrong and the command that removes it. Digests are
  cached per process by (device, inode, size, mtime, ctime), so an entry read again is not
  re-hashed. ``Store(root, on_corrupt="recompute")`` (or ``BDLIB_STORE_ON_CORRUPT=recompute``)
  instead moves a corrupt entry aside to ``.corrupt-<key>-…`` (kept for inspection, never
  served) and has :meth:`Store.has` answer False, so the pipeline recomputes it.
  :meth:`Store.verify` checks a whole store and :meth:`Store.remove` deletes one entry.
  Entries written before checksums existed are still served, with one warning per kind
  and process; their JSON and safetensors headers are still checked.

The lock is an OS file lock (``flock`` via :mod:`filelock`) in
``<root>/<kind>/.locks/<hash>.lock``; it is released when the holder exits or is killed.
"""
from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_bytes, load_file, save_file

from .filelocks import held, hostname, pid_alive

T = TypeVar("T")

MANIFEST = "manifest.json"
FILE_MODE = 0o644
DIR_MODE = 0o755
#: temporaries written by another host are only removed once they are this old (a save
#: holds its temporary for seconds, so a day-old one is certainly abandoned)
FOREIGN_STALE_AGE_S = 24 * 3600.0
#: how long readers keep retrying while an entry is being swapped
READ_RETRY_S = 5.0
#: what a store does with an entry that fails verification (``Store(on_corrupt=...)``)
ON_CORRUPT = ("raise", "recompute")
ON_CORRUPT_ENV = "BDLIB_STORE_ON_CORRUPT"
WEIGHTS = "weights.safetensors"

_CLEANED: set[tuple[str, str]] = set()  # (root, kind) already cleaned by this process


def config_key(config: dict) -> str:
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _json_default(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def _strict(obj: Any, path: tuple, nonfinite: list) -> Any:
    """A JSON-ready copy of ``obj`` with non-finite floats replaced by None (positions noted)."""
    if isinstance(obj, float):  # also numpy.float64
        if math.isfinite(obj):
            return float(obj)
        nonfinite.append([list(path), "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")])
        return None
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, dict):
        return {k: _strict(v, (*path, str(k) if not isinstance(k, str) else k), nonfinite) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v, (*path, i), nonfinite) for i, v in enumerate(obj)]
    return _strict(_json_default(obj), path, nonfinite)


def strict_json(obj: Any, **kwargs) -> str:
    """``json.dumps`` that never writes NaN/Infinity (they become ``null``)."""
    return json.dumps(_strict(obj, (), []), allow_nan=False, **kwargs)


def _restore_nonfinite(metrics: Any, nonfinite: list) -> Any:
    for path, value in nonfinite or ():
        try:
            node = metrics
            for p in path[:-1]:
                node = node[p]
            if node[path[-1]] is None:
                node[path[-1]] = float(value)
        except (KeyError, IndexError, TypeError):
            pass
    return metrics


def provenance() -> dict:
    """Git commit (and whether the tree was dirty), time, torch's version and its intra-op
    thread count (the thread count changes float summation order, so weights trained with
    1 and 2 threads differ: tables show it next to the numbers)."""
    here = Path(__file__).resolve().parent
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {
        "git_commit": git("rev-parse", "HEAD") or "unknown",
        "git_dirty": bool(git("status", "--porcelain", "--", ".")),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def _parse_scratch(name: str) -> tuple[str, str | None, int | None] | None:
    """``.tmp-<key>-<host>-<pid>-<token>`` (or the old ``.tmp-<key>-<pid>``) -> (key, host, pid)."""
    parts = name.split("-")
    if len(parts) == 5 and parts[3].isdigit():
        return parts[1], parts[2], int(parts[3])
    if len(parts) == 3 and parts[2].isdigit():  # written by the store before hosts were recorded
        return parts[1], None, int(parts[2])
    return None


_renameat2: Any = None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2(RENAME_EXCHANGE)``).

    False where that is unsupported (other OS or libc, some filesystems) or ``b`` is gone.
    """
    global _renameat2
    if _renameat2 is None:
        try:
            import ctypes
            fn = ctypes.CDLL(None, use_errno=True).renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
            _renameat2 = fn
        except (OSError, AttributeError):
            _renameat2 = False
    if not _renameat2:
        return False
    import ctypes
    at_fdcwd, rename_exchange = -100, 2
    if _renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOENT, errno.EINVAL, errno.ENOSYS, errno.EXDEV, errno.EPERM,
               getattr(errno, "ENOTSUP", errno.EINVAL), getattr(errno, "EOPNOTSUPP", errno.EINVAL)):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _write_text(path: Path, text: str) -> bytes:
    """Write ``text`` as UTF-8 (mode 0644); returns the bytes written."""
    data = text.encode()
    path.write_bytes(data)
    os.chmod(path, FILE_MODE)
    return data


# ----------------------------------------------------------------------------- integrity
class StoreError(Exception):
    """Base class of the errors the store raises about its own content."""


class StoreIntegrityError(StoreError):
    """A stored entry failed verification: it is never served.

    ``kind``/``key`` name the entry, ``path`` its directory, ``file`` the file that failed
    (``None``: the entry as a whole), ``reason`` what is wrong; ``moved_to`` is where the
    entry was moved aside (``on_corrupt="recompute"``), else ``None``. The message ends with
    the command that removes the entry.
    """

    def __init__(self, kind: str, key: str, path: str, file: str | None, reason: str, moved_to: str | None = None):
        self.kind, self.key, self.path, self.file = kind, key, str(path), file
        self.reason, self.moved_to = reason, moved_to
        super().__init__(self._message())

    def __reduce__(self):  # picklable (Dask ships exceptions between processes)
        return type(self), (self.kind, self.key, self.path, self.file, self.reason, self.moved_to)

    def _message(self) -> str:
        what = f"{self.file}: {self.reason}" if self.file else self.reason
        head = f"store entry {self.kind}/{self.key} failed verification: {what}\n  entry: {self.path}"
        if self.moved_to:
            return (f"{head}\n  It was moved aside to {self.moved_to} (kept for inspection, never served) "
                    f"and is recomputed the next time it is requested.")
        root = str(Path(self.path).parent.parent)
        return (f"{head}\n  It is not served. Remove it, and the pipeline recomputes it on the next run:\n"
                f"    rm -rf {shlex.quote(self.path)}\n"
                f"  (or BDLIB_DATA={shlex.quote(str(Path(root).parent))} python -m bdlib store remove {self.kind} "
                f"{self.key}; Store({root!r}).remove({self.kind!r}, {self.key!r}); or set {ON_CORRUPT_ENV}=recompute "
                f"to have corrupt entries moved aside and recomputed)")


class StoreWarning(UserWarning):
    """Something in the store is served unverified (entries written before checksums existed)."""


@dataclass(frozen=True)
class Problem:
    """One finding of :meth:`Store.verify`."""

    kind: str
    key: str
    path: str
    file: str | None
    reason: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.key}: {self.file + ': ' if self.file else ''}{self.reason} ({self.path})"


#: per process: (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns) -> sha256 of a verified file
_DIGESTS: dict[tuple, str] = {}
_DIGESTS_MAX = 65536
_WARNED: set[tuple[str, str, str]] = set()  # (root, kind, what) warned about once per process
_HASH_CHUNK = 1 << 20


def _file_identity(st: os.stat_result) -> tuple:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _digest_fd(fd: int) -> str:
    """SHA-256 of an open file (read with pread: the offset is left alone), cached by identity."""
    ident = _file_identity(os.fstat(fd))
    cached = _DIGESTS.get(ident)
    if cached is not None:
        return cached
    digest = _hash_fd(fd)
    if len(_DIGESTS) >= _DIGESTS_MAX:
        _DIGESTS.clear()
    _DIGESTS[ident] = digest
    return digest


def _hash_fd(fd: int) -> str:
    h, offset = hashlib.sha256(), 0
    while True:
        chunk = os.pread(fd, _HASH_CHUNK, offset)
        if not chunk:
            return h.hexdigest()
        h.update(chunk)
        offset += len(chunk)


def _read_fd(fd: int) -> bytes:
    parts, offset = [], 0
    while True:
        chunk = os.pread(fd, _HASH_CHUNK, offset)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        offset += len(chunk)


def _load_tensors_fd(fd: int) -> dict[str, torch.Tensor]:
    """Tensors of an open safetensors file, without re-opening it by name (the entry may be
    swapped meanwhile): through /proc/self/fd where it exists (mmap, no extra copy)."""
    proc = f"/proc/self/fd/{fd}"
    if os.path.exists(proc):
        return load_file(proc)
    return load_bytes(_read_fd(fd))


def _check_header_fd(fd: int) -> None:
    """Raise SafetensorError unless the file's header parses and covers the whole file."""
    proc = f"/proc/self/fd/{fd}"
    if os.path.exists(proc):
        with safe_open(proc, framework="pt") as f:
            f.keys()
    else:
        load_bytes(_read_fd(fd))


def _outside_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first caller outside this module."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    return level


def _on_corrupt_mode(value: str | None) -> str:
    value = value if value is not None else (os.environ.get(ON_CORRUPT_ENV) or "raise")
    if value not in ON_CORRUPT:
        raise ValueError(f"on_corrupt={value!r} (or ${ON_CORRUPT_ENV}) is not one of: {', '.join(ON_CORRUPT)}")
    return value


@dataclass
class _Entry:
    config: dict | None = None
    metrics: dict | None = None
    tensors: dict[str, torch.Tensor] | None = None
    checked: bool = False  # checksums were recorded and verified


class Store:
    """The artifact store under ``root``.

    ``on_corrupt`` says what happens to an entry that fails verification: ``"raise"`` (the
    default) raises :class:`StoreIntegrityError` from every read; ``"recompute"`` moves the
    entry aside to ``.corrupt-<key>-…`` and :meth:`has` answers False, so the pipeline
    computes it again. ``None`` reads ``$BDLIB_STORE_ON_CORRUPT`` (default ``raise``).
    """

    def __init__(self, root: str | os.PathLike, on_corrupt: str | None = None):
        self.root = Path(root)
        self.on_corrupt = _on_corrupt_mode(on_corrupt)

    # ----------------------------------------------------------------------------- paths
    def path(self, kind: str, config: dict) -> Path:
        return self.root / kind / config_key(config)

    def lock_path(self, kind: str, config: dict) -> Path:
        return self.root / kind / ".locks" / f"{config_key(config)}.lock"

    def _scratch_name(self, prefix: str, key: str) -> str:
        return f"{prefix}-{key}-{hostname()}-{os.getpid()}-{secrets.token_hex(4)}"

    def _kinds(self) -> list[str]:
        return sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith(".")) \
            if self.root.is_dir() else []

    # ----------------------------------------------------------------------------- state
    @staticmethod
    def _complete(d: Path) -> bool:
        """An entry is complete when metrics.json and every file its manifest lists exist."""
        try:
            manifest = json.loads((d / MANIFEST).read_text())
        except FileNotFoundError:  # written before manifests existed, or absent altogether
            return (d / "metrics.json").is_file()
        except (OSError, ValueError):
            return False
        if not isinstance(manifest, dict):
            return False
        files = set(manifest.get("files", ())) | set(manifest.get("sha256", ())) | {"metrics.json"}
        return all((d / f).is_file() for f in files)

    def _swapping(self, kind: str, key: str) -> bool:
        """Whether a writer is (or a dead writer was) in the middle of replacing ``key``."""
        here = hostname()
        for d in (self.root / kind).glob(f".trash-{key}-*"):
            parsed = _parse_scratch(d.name)
            if parsed is None or parsed[1] != here or pid_alive(parsed[2]):
                return True
        return False  # none, or only those of dead writers (clean_stale restores them)

    def _retrying(self, kind: str, key: str, read: Callable[[], T]) -> T:
        """Run ``read``; while it fails because the entry is being swapped, retry briefly."""
        final = self.root / kind / key
        deadline = time.monotonic() + READ_RETRY_S
        delay = 0.002
        while True:
            try:
                return read()
            except FileNotFoundError:
                if time.monotonic() > deadline or not (final.exists() or self._swapping(kind, key)):
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _settled_complete(self, kind: str, key: str) -> bool:
        final = self.root / kind / key
        if self._complete(final):
            return True
        deadline = time.monotonic() + READ_RETRY_S
        while self._swapping(kind, key) and time.monotonic() < deadline:  # an entry is being swapped
            time.sleep(0.01)
            if self._complete(final):
                return True
        return False

    def _clean_once(self, kind: str) -> None:
        if (str(self.root.absolute()), kind) not in _CLEANED:
            self.clean_stale(kind)

    def has(self, kind: str, config: dict) -> bool:
        """Whether a complete artifact of this config exists (metrics, and weights if it declares them).

        With ``on_corrupt="recompute"`` the entry is also verified (checksums, key, JSON);
        a corrupt one is moved aside to ``.corrupt-<key>-…`` and False is returned.
        """
        key = config_key(config)
        self._clean_once(kind)
        if not self._settled_complete(kind, key):
            return False
        if self.on_corrupt != "recompute":
            return True
        return self._intact(kind, key, warn=True)

    # ----------------------------------------------------------------------------- locking
    @contextmanager
    def lock(self, kind: str, config: dict, *, notice_after: float = 5.0,
             timeout: float | None = None) -> Iterator[Path]:
        """Hold the per-key lock of ``(kind, config)`` — one process computes, the others wait.

        Use it around "check, else compute and save", so that processes (or threads) that
        need the same artifact compute it once::

            with store.lock("models", cfg):
                if store.has("models", cfg):
                    return store.load_model_into("models", cfg, net)
                ...train...
                store.save_model("models", cfg, net, metrics)

        If the lock is not free within ``notice_after`` seconds a line naming the key
        (``waiting for models/<hash> ...``) is printed to stderr, then the wait goes on,
        forever or until ``timeout`` seconds in all (``filelock.Timeout`` is raised then).
        The lock is re-entrant within one thread; it is an OS lock on
        ``<root>/<kind>/.locks/<hash>.lock``, released if the holder dies. Yields the
        entry's final path. Plain ``has``/``load_*``/``save`` need no lock.
        """
        key = config_key(config)
        with held(self.lock_path(kind, config), f"{kind}/{key}",
                  notice_after=notice_after, timeout=timeout):
            yield self.root / kind / key

    # ----------------------------------------------------------------------------- writing
    def save(self, kind: str, config: dict, metrics: dict, tensors: dict[str, torch.Tensor] | None = None,
             *, replace: bool = False) -> Path:
        """Write an entry atomically and return its path.

        If a complete, intact entry of this config already exists it is kept and this copy
        is discarded (entries are immutable), unless ``replace=True``: then the existing
        entry is renamed aside and this one renamed into place, with no moment at which a
        reader can see a partial entry. An existing entry that fails verification is moved
        aside to ``.corrupt-<key>-…`` and replaced. The manifest records the SHA-256 and size
        of every file.
        """
        kind_dir = self.root / kind
        key = config_key(config)
        final = kind_dir / key
        kind_dir.mkdir(parents=True, exist_ok=True)
        self._clean_once(kind)
        tmp = kind_dir / self._scratch_name(".tmp", key)
        tmp.mkdir()
        try:
            os.chmod(tmp, DIR_MODE)
            digests: dict[str, str] = {}
            sizes: dict[str, int] = {}

            def record(name: str, data: bytes) -> None:
                digests[name], sizes[name] = hashlib.sha256(data).hexdigest(), len(data)

            config_bytes = _write_text(tmp / "config.json",
                                       json.dumps(config, indent=1, sort_keys=True, default=_json_default))
            record("config.json", config_bytes)
            files = ["config.json", "metrics.json"]
            if tensors is not None:
                save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / WEIGHTS))
                os.chmod(tmp / WEIGHTS, FILE_MODE)
                fd = os.open(tmp / WEIGHTS, os.O_RDONLY)
                try:
                    digests[WEIGHTS], sizes[WEIGHTS] = _digest_fd(fd), os.fstat(fd).st_size
                finally:
                    os.close(fd)
                files.append(WEIGHTS)
            nonfinite: list = []
            record("metrics.json", _write_text(tmp / "metrics.json",
                                               json.dumps(_strict(metrics, (), nonfinite), indent=1, allow_nan=False)))
            try:  # a config holding non-JSON values (numpy scalars) does not hash back to its key
                rehashes = config_key(json.loads(config_bytes)) == key
            except ValueError:
                rehashes = False
            _write_text(tmp / MANIFEST, json.dumps({
                "format": 2, "key": key, "files": files, "nonfinite": nonfinite, "sha256": digests, "size": sizes,
                "config_rehashes": rehashes}, indent=1))
            self._publish(kind_dir, key, tmp, replace)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already unless we kept an existing entry
        return final

    def _publish(self, kind_dir: Path, key: str, tmp: Path, replace: bool) -> None:
        final = kind_dir / key
        for _ in range(100):
            if final.exists() and not replace and self._complete(final):
                if self._intact(kind_dir.name, key):
                    return  # immutable: an identical artifact is already there
                continue  # a corrupt entry was moved aside (or replaced meanwhile): look again
            if final.exists() and _exchange(tmp, final):
                return  # swapped in one step; tmp now holds the old entry, which save() removes
            trash = None
            if final.exists():  # no atomic exchange here: rename the old entry aside, then ours in
                trash = kind_dir / self._scratch_name(".trash", key)
                try:
                    os.rename(final, trash)
                except FileNotFoundError:  # another writer moved it first
                    trash = None
            try:
                os.rename(tmp, final)
                return
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                # another writer put its entry in between; loop: keep it, or replace it
            finally:
                if trash is not None:
                    shutil.rmtree(trash, ignore_errors=True)
        raise RuntimeError(f"could not publish {final} (contention with other writers)")

    def _intact(self, kind: str, key: str, warn: bool = False) -> bool:
        """Whether the existing entry verifies; a corrupt one is moved aside (False)."""
        try:
            self._retrying(kind, key, lambda: self._read(kind, key, warn=warn))
        except FileNotFoundError:
            return False
        except StoreIntegrityError as exc:
            self._set_aside(exc)
            return False
        return True

    def save_model(self, kind: str, config: dict, model: torch.nn.Module, metrics: dict, **kwargs) -> Path:
        return self.save(kind, config, metrics, model.state_dict(), **kwargs)

    def clean_stale(self, kind: str | None = None) -> list[Path]:
        """Remove ``.tmp-*``/``.trash-*`` folders left by dead processes; returns what was removed.

        A folder is stale when it was made on this host by a process that is no longer
        alive, or on another host more than :data:`FOREIGN_STALE_AGE_S` ago. A live
        process's folders are never touched. If a writer died between renaming an old entry
        aside and renaming its new one in, the old entry is put back. Entries moved aside
        as corrupt (``.corrupt-*``) are kept.
        """
        kinds = [kind] if kind is not None else self._kinds()
        here, removed = hostname(), []
        for k in kinds:
            kind_dir = self.root / k
            _CLEANED.add((str(self.root.absolute()), k))
            if not kind_dir.is_dir():
                continue
            for d in sorted(kind_dir.glob(".t*-*")):
                if not (d.name.startswith(".tmp-") or d.name.startswith(".trash-")):
                    continue
                parsed = _parse_scratch(d.name)
                if parsed is not None and parsed[1] in (None, here):
                    stale = not pid_alive(parsed[2])
                else:
                    try:
                        stale = time.time() - d.lstat().st_mtime > FOREIGN_STALE_AGE_S
                    except FileNotFoundError:
                        continue
                if not stale:
                    continue
                if d.name.startswith(".trash-") and parsed is not None and self._complete(d):
                    try:  # its writer died mid-swap: restore the old entry if nothing replaced it
                        os.rename(d, kind_dir / parsed[0])
                        continue
                    except OSError:
                        pass
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d)
        return removed

    # ----------------------------------------------------------------------------- verifying
    def _read(self, kind: str, key: str, *, config: bool = False, metrics: bool = False, tensors: bool = False,
              warn: bool = True) -> _Entry:
        """Verify the entry ``kind/key`` as a whole and return the parts asked for.

        Every file is read from one directory version (a directory fd), so a concurrent swap
        can never mix two versions. Raises FileNotFoundError when the entry is (momentarily)
        not there — ``_retrying`` retries over a swap — and :class:`StoreIntegrityError`
        when it is there but wrong.
        """
        d = self.root / kind / key
        dirfd = os.open(d, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        fds: list[int] = []
        try:
            def fail(file: str | None, reason: str):
                exc = StoreIntegrityError(kind, key, str(d.absolute()), file, reason)
                exc._ino = os.fstat(dirfd).st_ino  # which directory version failed (see _set_aside)
                raise exc from None  # the message says what the underlying error said

            def open_file(name: str) -> int:
                try:
                    fd = os.open(name, os.O_RDONLY, dir_fd=dirfd)
                except FileNotFoundError:
                    try:
                        current = os.stat(d).st_ino
                    except FileNotFoundError:
                        raise  # the entry was moved away while we read: a swap or a removal
                    if current != os.fstat(dirfd).st_ino:
                        raise  # replaced meanwhile: read the new version
                    fail(name, "missing (the entry is incomplete: a partial copy, or a file was deleted)")
                fds.append(fd)
                return fd

            def parse(name: str, data: bytes) -> Any:
                try:
                    return json.loads(data)
                except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
                    fail(name, f"not valid JSON ({e}; {len(data)} bytes)")

            try:
                fds.append(os.open(MANIFEST, os.O_RDONLY, dir_fd=dirfd))
            except FileNotFoundError:
                manifest = None  # an entry from before manifests
            else:
                manifest = parse(MANIFEST, _read_fd(fds[-1]))
            if manifest is not None and not isinstance(manifest, dict):
                fail(MANIFEST, f"not a JSON object ({type(manifest).__name__})")
            checked = manifest is not None and isinstance(manifest.get("sha256"), dict)
            if checked:
                if manifest.get("key") != key:
                    fail(MANIFEST, f"it was written for key {manifest.get('key')!r}: this directory holds another "
                                   f"entry's files (renamed or swapped)")
                names = dict(manifest["sha256"])
                sizes = manifest.get("size") if isinstance(manifest.get("size"), dict) else {}
                for required in ("config.json", "metrics.json"):
                    if required not in names:
                        fail(MANIFEST, f"lists no checksum for {required}")
            else:
                names = {n: None for n in (manifest or {}).get("files", ("config.json", "metrics.json"))}
                names["metrics.json"] = None
                try:
                    os.stat(WEIGHTS, dir_fd=dirfd)
                    names[WEIGHTS] = None
                except FileNotFoundError:
                    pass
            for name in names:
                if not isinstance(name, str) or name in ("", ".", "..", MANIFEST) or "/" in name or os.sep in name:
                    fail(MANIFEST, f"lists {name!r}, which is not a file of the entry")
            data: dict[str, bytes] = {}
            weights_fd = None
            for name, expected in names.items():
                fd = open_file(name)
                if name.endswith(".json"):
                    data[name] = _read_fd(fd)
                    size, digest = len(data[name]), hashlib.sha256(data[name]).hexdigest() if checked else None
                else:
                    size = os.fstat(fd).st_size
                    if name == WEIGHTS:
                        weights_fd = fd
                    if checked and size == sizes.get(name, size):
                        digest = _digest_fd(fd)
                if not checked:
                    continue
                if name in sizes and size != sizes[name]:
                    how = "empty" if size == 0 else "truncated" if size < sizes[name] else "grown"
                    fail(name, f"{how}: {size} bytes, {sizes[name]} were saved")
                if digest != expected:
                    fail(name, f"SHA-256 {digest[:16]}… differs from the {str(expected)[:16]}… recorded when it "
                               f"was saved: the file was modified, or replaced by another entry's")
            cfg = parse("config.json", data["config.json"]) if "config.json" in data else None
            mets = parse("metrics.json", data["metrics.json"])
            if cfg is not None:
                actual = config_key(cfg)
                if actual != key and checked and manifest.get("config_rehashes"):
                    fail("config.json", f"it describes key {actual}, not {key} (swapped)")
                if actual != key and not checked and warn:
                    self._warn_once(kind, "key", f"{d}/config.json hashes to key {actual}, not {key}: the entry "
                                                 f"may have been swapped (or its config holds non-JSON values); it "
                                                 f"is served unverified. Remove it if in doubt: "
                                                 f"rm -rf {shlex.quote(str(d))}")
            if not checked and warn:
                self._warn_once(kind, "unchecked", f"entries of {self.root / kind} written before the store recorded "
                                                   f"checksums (e.g. {d}) are served without verification; remove "
                                                   f"them (they are recomputed) to have them checked")
            out = _Entry(config=cfg if config else None, checked=checked)
            if metrics:
                out.metrics = _restore_nonfinite(mets, (manifest or {}).get("nonfinite"))
            if weights_fd is not None and (tensors or not checked):
                try:
                    if tensors:
                        out.tensors = _load_tensors_fd(weights_fd)
                    else:
                        _check_header_fd(weights_fd)
                except (SafetensorError, ValueError, RuntimeError, OverflowError) as e:
                    size = os.fstat(weights_fd).st_size
                    fail(WEIGHTS, f"not a readable safetensors file ({size} bytes: {e})")
            elif tensors:
                raise StoreError(f"store entry {kind}/{key} has no {WEIGHTS} (saved without tensors): {d}")
            return out
        finally:
            for fd in fds:
                os.close(fd)
            os.close(dirfd)

    def _warn_once(self, kind: str, what: str, message: str) -> None:
        tag = (str(self.root.absolute()), kind, what)
        if tag not in _WARNED:
            _WARNED.add(tag)
            warnings.warn(message, StoreWarning, stacklevel=_outside_stacklevel())

    def _set_aside(self, exc: StoreIntegrityError) -> StoreIntegrityError:
        """Move the corrupt entry of ``exc`` aside to ``.corrupt-<key>-…`` (unless it was
        replaced meanwhile) and return ``exc`` with ``moved_to`` filled in."""
        final = self.root / exc.kind / exc.key
        moved = None
        try:
            if getattr(exc, "_ino", None) in (None, os.stat(final).st_ino):
                dest = final.parent / self._scratch_name(".corrupt", exc.key)
                os.rename(final, dest)
                moved = str(dest.absolute())
        except FileNotFoundError:
            pass
        out = StoreIntegrityError(exc.kind, exc.key, exc.path, exc.file, exc.reason, moved)
        if moved:
            try:  # why it was set aside, next to the evidence
                _write_text(Path(moved) / "CORRUPT.txt", str(exc) + "\n")
            except OSError:
                pass
        if moved:
            warnings.warn(str(out), StoreWarning, stacklevel=_outside_stacklevel())
        return out

    def _get(self, kind: str, key: str, **parts) -> _Entry:
        try:
            return self._retrying(kind, key, lambda: self._read(kind, key, **parts))
        except StoreIntegrityError as exc:
            if self.on_corrupt == "recompute":
                raise self._set_aside(exc) from None
            raise

    def verify(self, kind: str | None = None, *, strict: bool = False) -> list[Problem]:
        """Check every entry (of ``kind``, or of all kinds): checksums, sizes, key, JSON and
        safetensors headers. Returns the problems found (empty: the store verifies); moves
        and removes nothing. ``strict=True`` also reports entries written before checksums
        existed (they are served, unverified). Remove what it reports with
        ``for p in store.verify(): store.remove(p.kind, p.key)``.
        """
        problems = []
        for k in ([kind] if kind is not None else self._kinds()):
            kind_dir = self.root / k
            if not kind_dir.is_dir():
                continue
            for d in sorted(kind_dir.iterdir()):
                if d.name.startswith(".") or not d.is_dir():
                    continue
                try:
                    entry = self._retrying(k, d.name, lambda: self._read(k, d.name, warn=False))
                except FileNotFoundError:
                    continue  # removed while we listed
                except StoreIntegrityError as exc:
                    problems.append(Problem(k, d.name, exc.path, exc.file, exc.reason))
                    continue
                if strict and not entry.checked:
                    problems.append(Problem(k, d.name, str(d), None, "no checksums recorded (written before the store "
                                                                     "recorded them): served unverified"))
        return problems

    def remove(self, kind: str, key: str | dict) -> bool:
        """Delete one entry (``key``: its hash, or its config); True if there was one.

        The entry is first renamed to a private ``.tmp-…`` folder (readers never see it half
        deleted; if this process dies, :meth:`clean_stale` finishes the job)."""
        key = config_key(key) if isinstance(key, dict) else key
        if not key or key.startswith(".") or "/" in key or os.sep in key:
            raise ValueError(f"not a store key: {key!r}")
        final = self.root / kind / key
        scratch = final.parent / self._scratch_name(".tmp", key)
        try:
            os.rename(final, scratch)
        except FileNotFoundError:
            return False
        shutil.rmtree(scratch, ignore_errors=True)
        return True

    def merge_from(self, other: str | os.PathLike | "Store") -> int:
        """Copy into this store every entry of ``other`` it lacks, each verified first and
        published in one rename (so a reader never sees half of one); returns how many.

        Why: stores built elsewhere — on cluster nodes with local disks, or by a test in a
        temporary folder — join the shared one without recomputation. A corrupt entry of
        ``other`` raises :class:`StoreIntegrityError` before anything of it is copied."""
        other = other if isinstance(other, Store) else Store(other)
        copied = 0
        for kind in other._kinds():
            for d in sorted((other.root / kind).iterdir()):
                if d.name.startswith(".") or not d.is_dir() or (self.root / kind / d.name).exists():
                    continue
                other._read(kind, d.name, warn=False)  # verify before copying
                kind_dir = self.root / kind
                kind_dir.mkdir(parents=True, exist_ok=True)
                tmp = kind_dir / self._scratch_name(".tmp", d.name)
                shutil.copytree(d, tmp)
                self._publish(kind_dir, d.name, tmp, replace=False)
                shutil.rmtree(tmp, ignore_errors=True)  # left only when an entry was already there
                copied += 1
        return copied

    # ----------------------------------------------------------------------------- reading
    def load_metrics(self, kind: str, config: dict) -> dict:
        """The entry's metrics, after verifying the whole entry."""
        return self._get(kind, config_key(config), metrics=True).metrics

    def load_tensors(self, kind: str, config: dict) -> dict[str, torch.Tensor]:
        """The entry's tensors, after verifying the whole entry."""
        return self._get(kind, config_key(config), tensors=True).tensors

    def load_model_into(self, kind: str, config: dict, model: torch.nn.Module) -> torch.nn.Module:
        model.load_state_dict(self.load_tensors(kind, config))
        return model.eval()

    def records(self, kind: str) -> list[dict[str, Any]]:
        """All complete artifacts of a kind as {"config": ..., "metrics": ..., "path": ...},
        each verified (a corrupt one raises, or with ``on_corrupt="recompute"`` is moved
        aside with a warning and left out)."""
        kind_dir = self.root / kind
        keys = {d.name for d in kind_dir.glob("[!.]*")}
        keys |= {parsed[0] for d in kind_dir.glob(".trash-*") if (parsed := _parse_scratch(d.name))}  # mid-swap
        out = []
        for key in sorted(keys):
            if not self._settled_complete(kind, key):
                continue
            d = kind_dir / key
            try:
                entry = self._retrying(kind, key, lambda: self._read(kind, key, config=True, metrics=True))
            except FileNotFoundError:  # removed for good while we listed
                continue
            except StoreIntegrityError as exc:
                if self.on_corrupt == "recompute":
                    self._set_aside(exc)
                    continue
                raise
            out.append({"config": entry.config, "metrics": entry.metrics, "path": str(d)})
        return out
