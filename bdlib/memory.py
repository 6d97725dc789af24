"""Peak resident memory of one block of code, not of the whole process.

Why: ``getrusage().ru_maxrss`` is the process's peak since it started, so in a notebook that
loads the data, trains victims and runs nine defenses in one kernel, every defense would
report the largest of all of them. Linux (>= 4.0) lets a process reset its own high-water
mark by writing ``5`` to ``/proc/self/clear_refs``; the peak of a block is then ``VmHWM``
read at its end. Where that is not possible (another OS, a locked-down /proc) the block
reports the lifetime peak and says so in ``scope``. The reset is process-wide: on Linux
``ru_maxrss`` reads the same high-water mark, so it restarts from the block too.

The peak is of the whole process during the block, so it includes what was already
resident when it started (``start_mb``: data, the victim model); ``extra_mb`` is the
block's own growth above that.
"""
from __future__ import annotations

import resource
from dataclasses import dataclass
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_mb(field: str) -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return None


def _reset_high_water_mark() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _status_mb("VmHWM") is not None


def _lifetime_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


@dataclass
class PeakRSS:
    """``with PeakRSS() as mem: ...`` then ``mem.peak_mb``, ``mem.extra_mb``, ``mem.scope``
    (``"block"``: this block's own peak; ``"process"``: the lifetime peak, reset impossible)."""

    start_mb: float = 0.0
    peak_mb: float = 0.0
    scope: str = "block"

    def __enter__(self) -> "PeakRSS":
        self.scope = "block" if _reset_high_water_mark() else "process"
        self.start_mb = _status_mb("VmRSS") or 0.0
        return self

    def __exit__(self, *exc) -> None:
        hwm = _status_mb("VmHWM") if self.scope == "block" else None
        self.peak_mb = hwm if hwm is not None else _lifetime_peak_mb()

    @property
    def extra_mb(self) -> float:
        return max(0.0, self.peak_mb - self.start_mb)

    def as_metrics(self) -> dict:
        return {"peak_rss_mb": self.peak_mb, "rss_start_mb": self.start_mb, "peak_rss_scope": self.scope}
