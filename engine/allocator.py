"""glibc allocator thresholds for compute processes (once per process).

Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (return freed
memory to the OS early). Setting any threshold also freezes glibc's dynamic mmap
threshold at 128 KiB, so every array larger than that (a PET slab, an ANTs image
copy, a torch convolution buffer) is mmapped, page-faulted page by page and
unmapped again when freed: on this project's 2-core VM a third of a worker's CPU
went to the kernel. :func:`tune_malloc` sets the trim and mmap thresholds to
:data:`MALLOC_BYTES`, so freed buffers are reused from the heap instead.

Measured (2-core VM, demo-size study, every analysis stage in one Dask worker of one
thread, ``MALLOC_ARENA_MAX=1``): system share of CPU 0.36 -> 0.08, minor page faults
2.3 M -> 0.26 M per pass of 5 studies; nnU-Net U-Net_BL per study 8-10 s -> 3.9-4.8 s.
``benchmarks/bench_pipeline.py`` measures it on every run. The cost: a worker keeps up
to :data:`MALLOC_BYTES` of freed memory for reuse instead of returning it.
``PETCOHORT_MALLOC_TUNE=0`` turns it off (e.g. to compare).
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

__all__ = ["MALLOC_BYTES", "tune_malloc", "malloc_tuned"]

#: glibc trim and mmap thresholds (bytes) set by :func:`tune_malloc`.
MALLOC_BYTES = 256 * 2**20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3   # glibc mallopt parameters (malloc.h)
_TUNED = False


def malloc_tuned() -> bool:
    """Whether :func:`tune_malloc` changed this process's thresholds."""
    return _TUNED


def tune_malloc() -> bool:
    """Set glibc's trim and mmap thresholds to :data:`MALLOC_BYTES` (idempotent).

    Returns whether the thresholds are set now: False where the C library is not
    glibc (macOS, musl: nothing to tune) or ``PETCOHORT_MALLOC_TUNE=0``.
    """
    global _TUNED
    if _TUNED or os.environ.get("PETCOHORT_MALLOC_TUNE", "1") == "0":
        return _TUNED
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_TRIM_THRESHOLD, MALLOC_BYTES) == 1 and \
            libc.mallopt(_M_MMAP_THRESHOLD, MALLOC_BYTES) == 1
    except (OSError, AttributeError):
        return False
    _TUNED = bool(ok)
    log.debug("glibc trim/mmap thresholds set to %d MiB: %s", MALLOC_BYTES // 2**20, ok)
    return _TUNED
