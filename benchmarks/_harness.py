"""Shared helpers for every benchmark script in benchmarks/.

Each benchmark measures a candidate against a named baseline *in the same
run* and calls :func:`report`, which prints one row and writes
``benchmarks/results/<name>.json``. Scripts import this module as
``from _harness import report, timeit`` (Python puts the script's folder,
``benchmarks/``, on ``sys.path`` when run as ``python benchmarks/bench_x.py``).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["RESULTS_DIR", "timeit", "report"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_NAME = re.compile(r"[A-Za-z0-9._-]{1,80}")


def timeit(fn: Callable[[], Any], *, repeat: int = 5, warmup: int = 1) -> float:
    """Best (minimum) wall time of ``fn()`` over ``repeat`` runs, in seconds.

    The minimum, not the mean or median, is reported because on a shared
    machine noise only ever adds time; the fastest run is the closest
    estimate of the code's own cost (the advice of Python's ``timeit`` docs).

    Parameters
    ----------
    fn : callable
        Zero-argument function to time (its result is discarded).
    repeat : int
        Timed runs (>= 1).
    warmup : int
        Untimed runs first (imports, caches, JIT).
    """
    if repeat < 1 or warmup < 0:
        raise ValueError(f"repeat must be >= 1 and warmup >= 0, got repeat={repeat}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def report(name: str, candidate_label: str, candidate_s: float, baseline_label: str, baseline_s: float,
           extra: dict | None = None) -> dict:
    """Print ``name | candidate | baseline | ratio`` and write ``results/<name>.json``.

    Parameters
    ----------
    name : str
        Benchmark name (``[A-Za-z0-9._-]``), also the JSON file name.
    candidate_label, baseline_label : str
        What was measured (e.g. ``"CohortStore.write_arrays"``, ``"numpy.save"``).
    candidate_s, baseline_s : float
        Times in seconds (see :func:`timeit`: best of N).
    extra : dict, optional
        More numbers to keep (sizes, shapes, settings); must be JSON-able.

    Returns
    -------
    dict
        The record written. ``ratio`` = candidate_s / baseline_s: below 1 the
        candidate is faster, above 1 slower.
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"benchmark name must match [A-Za-z0-9._-]{{1,80}}, got {name!r}")
    if not (candidate_s > 0 and baseline_s > 0):
        raise ValueError(f"times must be > 0 s, got candidate {candidate_s!r}, baseline {baseline_s!r}")
    ratio = candidate_s / baseline_s
    record = {
        "name": name,
        "candidate": {"label": candidate_label, "seconds": candidate_s},
        "baseline": {"label": baseline_label, "seconds": baseline_s},
        "ratio": ratio,
        "ratio_definition": "candidate_s / baseline_s (< 1: candidate faster)",
        "timing": "best of N runs (harness.timeit)",
        "extra": _jsonable(extra or {}),
        "when": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs",
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    # The row is the script's output (not logging), hence stdout.
    sys.stdout.write(f"{name} | {candidate_label} {candidate_s * 1e3:.1f} ms | "
                     f"{baseline_label} {baseline_s * 1e3:.1f} ms | ratio {ratio:.2f}\n")
    sys.stdout.flush()
    return record
