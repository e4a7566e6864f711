"""glibc malloc and the decode threads: resident memory that does not grow with the images.

Why (issue 19, measured by ``benchmarks/decode_memory.py --infer``): ``mnv3 infer``'s resident
memory grew with the number of images while Python's heap stayed flat. glibc gives every thread
that allocates its own malloc arena (an infer process has 11: the main thread's, the decode and
reader threads', the engine's threads'), and raises its mmap threshold to the largest block
freed so far, so the decoded images and batches (hundreds of KB to MB each) are carved out of
those arenas instead of being mmapped and unmapped. A freed block stays in its arena, resident,
for the next allocation of that thread, and the mix of image sizes fragments them: over 10,000
images the arenas grew from 80 to 94 MB, of which the part free in their bins grew from 30 to
52 MB (``malloc_info``), while the part in use stayed flat (50 -> 42 MB).

The fix, in ``mnv3.data.loader``: ``malloc_trim(0)`` every ``TRIM_EVERY`` images hands the free
pages of every arena back to the system (a few ms each time, from the consuming thread).
Alternatives measured beside it (README, soak): fewer arenas (``mallopt(M_ARENA_MAX, 2)``,
process-wide and for good, so not imposed on a library's caller) and a fixed mmap threshold
(every large buffer mmapped and faulted in afresh).

Everything here is a no-op (returns False) where the C library is not glibc (musl, macOS,
Windows): ``glibc()`` is the guard.
"""

from __future__ import annotations

import ctypes
import functools
import platform

M_TRIM_THRESHOLD = -1  # glibc's <malloc.h> parameter numbers for mallopt
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


@functools.lru_cache(maxsize=1)
def glibc():
    """The process's C library as a ctypes handle when it is glibc (with mallopt and
    malloc_trim), else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)  # the libc this process already runs on
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


def mallopt(param: int, value: int) -> bool:
    """glibc ``mallopt(param, value)``; True when glibc accepted it."""
    libc = glibc()
    return bool(libc and libc.mallopt(param, value) == 1)


def malloc_trim() -> bool:
    """glibc ``malloc_trim(0)``: hand the free pages of every arena back to the system; True
    when some memory was released."""
    libc = glibc()
    return bool(libc and libc.malloc_trim(0))
