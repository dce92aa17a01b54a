"""A worker's freed memory goes back to the system once a storm of connections is over.

A worker grows with the connections it holds (OpenSSL's state of a TLS connection alone is
about 20 KiB of malloc'd memory) and glibc keeps what they free: on its own it returns only
free memory at the very top of its heap, and a heap freed in the order connections happen
to close has live blocks near the top. After 10,000 connections (half STLS) had closed, a
worker stayed at 248 MiB resident (65 MiB before them) for the rest of its life.
``malloc_trim(0)`` also gives back the free pages inside the heap: 114 MiB of those 183, in
15 ms (bench/RESULTS.md, section 15). What stays is CPython's own arenas that still hold a
live object somewhere in them, and what the sessions left in caches.

So a worker trims once its sessions have fallen to a quarter of the most it held since the
last trim, if that was a storm (``MIN_PEAK`` sessions), and ``DELAY`` seconds later, so that
one trim covers the end of the whole storm rather than each close. A worker that keeps its
sessions, or never held many, never trims. Without glibc (musl) there is no
``malloc_trim`` and nothing happens.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable

# Below this many sessions at the peak the heap holds a few MiB at most: not worth a look.
MIN_PEAK = 1000
# Trim once the sessions are down to 1/FALL of the peak ...
FALL = 4
# ... and still are this many seconds later.
DELAY = 2.0


class StormWatch:
    """When a trim is due, from the number of live sessions as they open and close (no
    clock, no system call: the worker schedules and trims)."""

    __slots__ = ("peak",)

    def __init__(self) -> None:
        self.peak = 0  # the most live sessions since the last trim

    def opened(self, live: int) -> None:
        self.peak = max(self.peak, live)

    def due(self, live: int) -> bool:
        return self.peak >= MIN_PEAK and live * FALL <= self.peak

    def trimmed(self, live: int) -> None:
        self.peak = live


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, None without it."""
    try:
        function = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    trim: Callable[[int], int] = function
    return trim


def resident_bytes() -> int:
    """This process's resident memory (0 if /proc cannot say)."""
    try:
        with open("/proc/self/statm", "rb") as handle:
            fields = handle.read().split()
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def trim() -> int | None:
    """Give the heap's free pages back to the system: the resident octets that went, None
    where there is no ``malloc_trim``."""
    function = _malloc_trim()
    if function is None:
        return None
    before = resident_bytes()
    function(0)
    return max(0, before - resident_bytes())
