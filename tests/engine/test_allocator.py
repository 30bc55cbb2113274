"""glibc allocator thresholds (engine/allocator.py): measured in a fresh process with Dask's worker setting."""
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt (Linux) only")

# Allocate and free a 16 MiB array 50 times; count the minor page faults of the loop.
_PROBE = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from petcohort.engine import allocator
    if sys.argv[1] == "tuned":
        assert allocator.tune_malloc() is True and allocator.tune_malloc() is True  # idempotent
    else:
        assert allocator.tune_malloc() is False and not allocator.malloc_tuned()
    np.ones(4 * 2**20, np.float32)                      # first use: faults either way
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        a = np.ones(4 * 2**20, np.float32); del a
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
""")


def _faults(mode: str, **env: str) -> int:
    e = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536", **env}   # what Dask's nanny gives a worker
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], env=e, capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def test_tuned_process_reuses_large_buffers_instead_of_faulting_them_in_again():
    huge_pages = 16 * 2**20 // (2 * 2**20)              # faults of one array even with 2 MiB huge pages
    untuned = _faults("off", PETCOHORT_MALLOC_TUNE="0")
    tuned = _faults("tuned")
    assert untuned >= 50 * huge_pages                   # every allocation mmapped and faulted in again
    assert tuned <= huge_pages and tuned * 10 < untuned  # reused from the heap
