"""Process heap hygiene for long runs on glibc (no-ops elsewhere).

:func:`bound_heap` (called by every ``hfasr`` command) keeps large buffers out of the heap;
:func:`trim_heap` (called by the streamed loaders once a split is indexed) hands the heap's
free pages back to the system: loading leaves many small freed C++ objects (e.g. the tensors
of an alignment file) between live ones, pages that later large buffers cannot reuse.
"""

from __future__ import annotations

import sys

MMAP_THRESHOLD = 128 * 1024  # bytes: glibc's initial M_MMAP_THRESHOLD, kept fixed


def bound_heap() -> bool:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD`, so that every large buffer (a
    batch's tensors) is returned to the system when freed. glibc raises the threshold each time
    such a buffer is freed (up to 32 MB); later ones then come from the heap, which fragments
    between the long-lived small objects of a run (cached features, lattice views) and does not
    shrink. Measured on synth HF-sMBR (2 updates): peak RSS 1,478 → 1,249 MB in memory and
    1,668 → 1,173 MB streamed. A user's own ``MALLOC_MMAP_THRESHOLD_`` is left alone. Returns
    whether the threshold was set (False off glibc)."""
    import ctypes
    import os

    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is not None or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(-3, MMAP_THRESHOLD))  # M_MMAP_THRESHOLD = -3 (malloc.h)
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


def trim_heap() -> bool:
    """``malloc_trim(0)``: return the heap's free pages to the system (glibc only). Measured: the
    16x synth alignment file (96k tensors) leaves about 60 MB that this returns."""
    import ctypes

    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL(None).malloc_trim(0))
    except (OSError, AttributeError):
        return False
