"""How the server's process gives freed memory back to the system (glibc's malloc).

A long-running server that computes many large, short-lived tensors from several
threads lets glibc keep the freed heap: each thread's arena grows to its largest
moment, and the mmap threshold rises after every large free, so later large tensors
come from the heaps and fragment them. :func:`configure` caps the arenas, pins the
mmap threshold (tensors of 1 MiB and more are mapped and unmapped whole) and lowers
the trim threshold; :func:`trim` hands the free pages at the top of every heap back
(``malloc_trim(0)``) after a heavy job. Both are no-ops where the C library is not
glibc. ``benchmarks/bench_memory.py --rounds`` measures what they change.

Nothing here imports torch: :func:`configure` must run before torch allocates.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

ARENAS = 2
"""malloc arenas: one per explanation running at once (the work slots)."""
MMAP_THRESHOLD = 1 << 20
"""Allocations of at least this many bytes are mapped on their own (1 MiB)."""
TRIM_THRESHOLD = 16 << 20
"""Free memory above this at the top of a heap is returned at once (16 MiB)."""


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to set
        return None
    return libc


def enabled() -> bool:
    """Whether the explorer tunes malloc: glibc, and ``EXPLORER_MALLOC`` is not
    ``default`` (which keeps glibc's own behaviour, the baseline of the benchmark)."""
    return _libc() is not None and os.environ.get("EXPLORER_MALLOC", "") != "default"


def configure() -> bool:
    """Set the arena cap and the mmap and trim thresholds (if :func:`enabled`). Returns
    whether they were set."""
    libc = _libc()
    if libc is None or not enabled():
        return False
    settings = (
        (M_ARENA_MAX, ARENAS),
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
    )
    return all(libc.mallopt(option, value) == 1 for option, value in settings)


def trim() -> None:
    """Give the free memory of every malloc heap back to the system (if :func:`enabled`)."""
    libc = _libc()
    if libc is not None and enabled():
        libc.malloc_trim(0)
