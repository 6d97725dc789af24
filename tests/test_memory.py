"""PeakRSS reports the peak of its own block, not the process's lifetime peak."""
import mmap
import resource

import pytest

from bdlib.memory import PeakRSS, _reset_high_water_mark

MB = 1 << 20


def _touch(n_mb: int) -> mmap.mmap:
    """n_mb of anonymous memory made resident page by page (independent of malloc settings)."""
    block = mmap.mmap(-1, n_mb * MB)
    for i in range(0, n_mb * MB, mmap.PAGESIZE):
        block[i] = 1
    return block


@pytest.mark.skipif(not _reset_high_water_mark(), reason="this kernel does not let a process reset VmHWM")
def test_peak_is_the_blocks_own_not_an_earlier_larger_one():
    _touch(300).close()  # an earlier, larger spike
    lifetime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # read now: the reset clears it too
    with PeakRSS() as mem:
        block = _touch(100)
        block.close()
    assert mem.scope == "block"
    assert 80 <= mem.extra_mb <= 200, mem
    assert mem.peak_mb <= lifetime - 150, (mem, lifetime)
    assert mem.as_metrics() == {"peak_rss_mb": mem.peak_mb, "rss_start_mb": mem.start_mb, "peak_rss_scope": "block"}


def test_without_a_reset_the_lifetime_peak_is_reported_and_labelled(monkeypatch):
    import bdlib.memory as memory

    monkeypatch.setattr(memory, "_reset_high_water_mark", lambda: False)
    with PeakRSS() as mem:
        pass
    assert mem.scope == "process"
    assert mem.peak_mb == pytest.approx(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, rel=0.01)
