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

The lock is an OS file lock (``flock`` via :mod:`filelock`) in
``<root>/<kind>/.locks/<hash>.lock``; it is released when the holder exits or is killed.
"""
from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import torch
from filelock import FileLock, Timeout
from safetensors.torch import load_file, save_file

T = TypeVar("T")

MANIFEST = "manifest.json"
FILE_MODE = 0o644
DIR_MODE = 0o755
#: temporaries written by another host are only removed once they are this old (a save
#: holds its temporary for seconds, so a day-old one is certainly abandoned)
FOREIGN_STALE_AGE_S = 24 * 3600.0
#: how long readers keep retrying while an entry is being swapped
READ_RETRY_S = 5.0

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


def _hostname() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "localhost"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: exists, belongs to someone else
        return True
    return True


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


def _write_text(path: Path, text: str) -> None:
    path.write_text(text)
    os.chmod(path, FILE_MODE)


class Store:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    # ----------------------------------------------------------------------------- paths
    def path(self, kind: str, config: dict) -> Path:
        return self.root / kind / config_key(config)

    def lock_path(self, kind: str, config: dict) -> Path:
        return self.root / kind / ".locks" / f"{config_key(config)}.lock"

    def _scratch_name(self, prefix: str, key: str) -> str:
        return f"{prefix}-{key}-{_hostname()}-{os.getpid()}-{secrets.token_hex(4)}"

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
        files = set(manifest.get("files", ())) | {"metrics.json"}
        return all((d / f).is_file() for f in files)

    def _swapping(self, kind: str, key: str) -> bool:
        """Whether a writer is (or a dead writer was) in the middle of replacing ``key``."""
        here = _hostname()
        for d in (self.root / kind).glob(f".trash-{key}-*"):
            parsed = _parse_scratch(d.name)
            if parsed is None or parsed[1] != here or _pid_alive(parsed[2]):
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

    def has(self, kind: str, config: dict) -> bool:
        """Whether a complete artifact of this config exists (metrics, and weights if it declares them)."""
        return self._settled_complete(kind, config_key(config))

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
        lock_file = self.lock_path(kind, config)
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        flock = FileLock(lock_file, is_singleton=True)
        try:
            flock.acquire(timeout=notice_after if timeout is None else min(notice_after, timeout))
        except Timeout:
            if timeout is not None and timeout <= notice_after:
                raise
            print(f"bdlib.store: waiting for {kind}/{key} (another process is computing it; lock {lock_file})",
                  file=sys.stderr, flush=True)
            flock.acquire(timeout=-1 if timeout is None else timeout - notice_after)
        try:
            yield self.root / kind / key
        finally:
            flock.release()

    # ----------------------------------------------------------------------------- writing
    def save(self, kind: str, config: dict, metrics: dict, tensors: dict[str, torch.Tensor] | None = None,
             *, replace: bool = False) -> Path:
        """Write an entry atomically and return its path.

        If a complete entry of this config already exists it is kept and this copy is
        discarded (entries are immutable), unless ``replace=True``: then the existing entry
        is renamed aside and this one renamed into place, with no moment at which a reader
        can see a partial entry.
        """
        kind_dir = self.root / kind
        key = config_key(config)
        final = kind_dir / key
        kind_dir.mkdir(parents=True, exist_ok=True)
        if (str(self.root.absolute()), kind) not in _CLEANED:
            self.clean_stale(kind)
        tmp = kind_dir / self._scratch_name(".tmp", key)
        tmp.mkdir()
        try:
            os.chmod(tmp, DIR_MODE)
            files = ["config.json", "metrics.json"]
            _write_text(tmp / "config.json", json.dumps(config, indent=1, sort_keys=True, default=_json_default))
            if tensors is not None:
                save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / "weights.safetensors"))
                os.chmod(tmp / "weights.safetensors", FILE_MODE)
                files.append("weights.safetensors")
            nonfinite: list = []
            _write_text(tmp / "metrics.json",
                        json.dumps(_strict(metrics, (), nonfinite), indent=1, allow_nan=False))
            _write_text(tmp / MANIFEST, json.dumps({"format": 1, "files": files, "nonfinite": nonfinite}, indent=1))
            self._publish(kind_dir, key, tmp, replace)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already unless we kept an existing entry
        return final

    def _publish(self, kind_dir: Path, key: str, tmp: Path, replace: bool) -> None:
        final = kind_dir / key
        for _ in range(100):
            if final.exists() and not replace and self._complete(final):
                return  # immutable: an identical artifact is already there
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

    def save_model(self, kind: str, config: dict, model: torch.nn.Module, metrics: dict, **kwargs) -> Path:
        return self.save(kind, config, metrics, model.state_dict(), **kwargs)

    def clean_stale(self, kind: str | None = None) -> list[Path]:
        """Remove ``.tmp-*``/``.trash-*`` folders left by dead processes; returns what was removed.

        A folder is stale when it was made on this host by a process that is no longer
        alive, or on another host more than :data:`FOREIGN_STALE_AGE_S` ago. A live
        process's folders are never touched. If a writer died between renaming an old entry
        aside and renaming its new one in, the old entry is put back.
        """
        kinds = [kind] if kind is not None else (
            [d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith(".")]
            if self.root.is_dir() else [])
        here, removed = _hostname(), []
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
                    stale = not _pid_alive(parsed[2])
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

    # ----------------------------------------------------------------------------- reading
    @staticmethod
    def _read_entry(d: Path) -> tuple[dict, dict]:
        """(config, metrics) of one entry, all files read from the same directory version."""
        dirfd = os.open(d, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            def read(name):
                with open(name, opener=lambda p, flags: os.open(p, flags, dir_fd=dirfd)) as fh:
                    return json.load(fh)
            try:
                manifest = read(MANIFEST)
            except FileNotFoundError:
                manifest = {}  # an entry from before manifests
            config, metrics = read("config.json"), read("metrics.json")
        finally:
            os.close(dirfd)
        return config, _restore_nonfinite(metrics, manifest.get("nonfinite"))

    def load_metrics(self, kind: str, config: dict) -> dict:
        key = config_key(config)
        return self._retrying(kind, key, lambda: self._read_entry(self.root / kind / key)[1])

    def load_tensors(self, kind: str, config: dict) -> dict[str, torch.Tensor]:
        key = config_key(config)
        return self._retrying(kind, key, lambda: load_file(str(self.root / kind / key / "weights.safetensors")))

    def load_model_into(self, kind: str, config: dict, model: torch.nn.Module) -> torch.nn.Module:
        model.load_state_dict(self.load_tensors(kind, config))
        return model.eval()

    def records(self, kind: str) -> list[dict[str, Any]]:
        """All complete artifacts of a kind as {"config": ..., "metrics": ..., "path": ...}."""
        kind_dir = self.root / kind
        keys = {d.name for d in kind_dir.glob("[!.]*")}
        keys |= {parsed[0] for d in kind_dir.glob(".trash-*") if (parsed := _parse_scratch(d.name))}  # mid-swap
        out = []
        for key in sorted(keys):
            if not self._settled_complete(kind, key):
                continue
            d = kind_dir / key
            try:
                config, metrics = self._retrying(kind, key, lambda: self._read_entry(d))
            except FileNotFoundError:  # removed for good while we listed
                continue
            out.append({"config": config, "metrics": metrics, "path": str(d)})
        return out
