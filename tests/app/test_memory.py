"""Memory that bulk scoring freed goes back to the system (app/memory.py)."""

from __future__ import annotations

import sys

import pytest

from app.memory import release_free_memory


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_memory_leaves_the_process() -> None:
    """What a batch freed stays in the allocator (the process keeps its resident size)
    until it is released; a second release within the interval does nothing."""
    blocks = [bytearray(4096) for _ in range(50_000)]  # ~200 MiB through malloc
    kept = blocks[::64]  # live blocks all through the heap: freeing alone returns little
    del blocks
    held = _rss_mib()
    assert release_free_memory(min_interval_s=0)
    assert held - _rss_mib() > 100
    assert not release_free_memory(min_interval_s=3600)
    assert len(kept) == 782
