"""Freed memory goes back to the system after bulk scoring.

glibc's allocator keeps what a request freed for the next one. A bulk batch (256 stays:
its body, decoded columns, tensors and answers, tens of MiB across the threads' arenas)
left the server's resident size where the batch took it: 446-481 MiB at the end of
`benchmarks.scoring` against 363 when ready, near the 500 MB the service is sized for.
`malloc_trim(0)` hands every arena's free pages back (2-7 ms, the GIL let go); Dask's
workers do the same. An inference thread calls it when it has had nothing to do for half a
second after bulk scoring and no other thread is scoring (app.batching): once the load
has passed, not during it, and never for single-patient requests. Elsewhere than glibc
(musl, macOS) there is nothing to call and nothing is done.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from collections.abc import Callable

__all__ = ["release_free_memory"]

MIN_INTERVAL_S = 1.0


def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim  # a CDLL call lets the GIL go
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int  # int malloc_trim(size_t)
    return trim  # type: ignore[no-any-return]


_TRIM = _malloc_trim()
_lock = threading.Lock()
_last = -MIN_INTERVAL_S


def release_free_memory(min_interval_s: float = MIN_INTERVAL_S) -> bool:
    """Give the allocator's free pages back to the system, unless that was done less than
    `min_interval_s` ago; whether it was done."""
    global _last
    if _TRIM is None:
        return False
    with _lock:
        now = time.monotonic()
        if now - _last < min_interval_s:
            return False
        _last = now
    _TRIM(0)
    return True
