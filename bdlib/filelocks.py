"""Inter-process locks and liveness checks shared by the store and the data sources.

Two processes that need the same artifact (a store entry, an embedded set, a downloaded
corpus) must not build it side by side: one builds, the others wait and then read what it
built. ``held`` is that wait, on an OS lock (``filelock``) that is released if its holder
dies, with one line on stderr when the wait gets long so that a user sees why a run stalls.
"""
from __future__ import annotations

import os
import re
import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout


def hostname() -> str:
    """This host's name with only ``[A-Za-z0-9.]`` kept (safe inside file names)."""
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "localhost"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (EPERM counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: exists, belongs to someone else
        return True
    return True


@contextmanager
def held(lock_file: str | os.PathLike, what: str, *, notice_after: float = 5.0,
         timeout: float | None = None) -> Iterator[None]:
    """Hold the exclusive lock ``lock_file`` (created with its folder if missing).

    If it is not free within ``notice_after`` seconds, ``waiting for <what> ...`` is
    printed to stderr (``what`` names the thing being built) and the wait goes on, forever or until ``timeout`` seconds in all
    (then ``filelock.Timeout``). Re-entrant within one thread.
    """
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    flock = FileLock(lock_file, is_singleton=True)
    try:
        flock.acquire(timeout=notice_after if timeout is None else min(notice_after, timeout))
    except Timeout:
        if timeout is not None and timeout <= notice_after:
            raise
        print(f"bdlib: waiting for {what}: another process is building it (it holds {lock_file})", file=sys.stderr, flush=True)
        flock.acquire(timeout=-1 if timeout is None else timeout - notice_after)
    try:
        yield
    finally:
        flock.release()
