"""The one place that decides numpy or cupy.

No other module imports cupy. Kernels call :func:`get_namespace` on their
input arrays and use the returned ``xp`` (array-API style, as dask-image's
dispatch layer does); cupy is imported lazily, only when a cupy array is seen
or a GPU is asked for.
"""
from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

import numpy as np

__all__ = ["get_namespace", "is_cupy", "to_numpy", "to_device", "mover", "gpu_available", "ndimage", "raw_kernel",
           "DEVICE_ENV", "stage_device", "is_out_of_memory", "run_on_device"]

log = logging.getLogger(__name__)

#: environment variable that keeps the stages on the CPU of a GPU worker (``cpu``).
DEVICE_ENV = "PETCOHORT_STAGE_DEVICE"

T = TypeVar("T")


@functools.lru_cache(maxsize=1)
def _cupy() -> ModuleType | None:
    try:
        import cupy  # noqa: PLC0415 - lazy by design
    except Exception:  # ImportError, or a CUDA runtime that fails to load
        return None
    return cupy


def is_cupy(array: Any) -> bool:
    """True when ``array`` is a cupy ndarray (without importing cupy otherwise)."""
    return type(array).__module__.startswith("cupy")


def get_namespace(*arrays: Any) -> ModuleType:
    """Return ``cupy`` if any of ``arrays`` lives on the GPU, else ``numpy``.

    Mixing host and device arrays is an error: a silent transfer would hide a
    performance bug.
    """
    flags = {is_cupy(a) for a in arrays if a is not None and hasattr(a, "shape")}
    if flags == {True}:
        cp = _cupy()
        if cp is None:  # pragma: no cover - cannot hold a cupy array without cupy
            raise RuntimeError("cupy array given but cupy cannot be imported")
        return cp
    if flags == {True, False}:
        raise TypeError("arrays mix numpy and cupy; move them to one device first")
    return np


def ndimage(xp: ModuleType) -> ModuleType:
    """scipy.ndimage or cupyx.scipy.ndimage matching namespace ``xp``."""
    if xp is np:
        import scipy.ndimage as ndi  # noqa: PLC0415

        return ndi
    import cupyx.scipy.ndimage as cndi  # noqa: PLC0415

    return cndi


def to_numpy(array: Any) -> np.ndarray:
    """Host copy of ``array`` (no copy for numpy input)."""
    if is_cupy(array):
        return array.get()
    return np.asarray(array)


def to_device(array: Any, device: str = "cpu") -> Any:
    """Move ``array`` to ``device`` ("cpu" or "cuda")."""
    if device == "cpu":
        return to_numpy(array)
    if device in ("cuda", "gpu"):
        cp = _cupy()
        if cp is None:
            raise RuntimeError("device 'cuda' asked for but cupy is not installed")
        return cp.asarray(array)
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


def mover(device: str) -> Callable[[Any], Any]:
    """A function that moves an array (or None) to ``device`` once per stage task.

    On ``"cpu"`` it is the identity: the host arrays a stage read are used as
    they are (no copy, and no device call that a CPU fallback could trip on).
    """
    if device == "cpu":
        return lambda a: a
    return lambda a: None if a is None else to_device(a, device)


def gpu_available() -> bool:
    """True when cupy imports and sees at least one CUDA device."""
    cp = _cupy()
    if cp is None:
        return False
    try:
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


@functools.lru_cache(maxsize=None)
def raw_kernel(source: str, name: str) -> Any:
    """Compiled ``cupy.RawKernel`` ``name`` from CUDA ``source`` (cached per process).

    Kernels keep their CUDA source; only this module touches cupy.
    """
    cp = _cupy()
    if cp is None:
        raise RuntimeError("a CUDA kernel was asked for but cupy is not installed")
    return cp.RawKernel(source, name)


def stage_device() -> str:
    """Device the array stages of this worker use: ``"cuda"`` on a GPU worker, else ``"cpu"``.

    ``PETCOHORT_STAGE_DEVICE=cpu`` keeps a GPU worker's stages on its CPU
    cores (a same-machine CPU baseline for benchmarks).
    """
    if os.environ.get(DEVICE_ENV, "").strip().lower() == "cpu":
        return "cpu"
    return "cuda" if gpu_available() else "cpu"


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a device allocation failure (cupy ``OutOfMemoryError``, CUDA ``...MEMORY_ALLOCATION``).

    Decided by the exception's type name and message, so cupy is not imported
    on CPU workers: cupy raises ``cupy.cuda.memory.OutOfMemoryError``, and a
    kernel launch or library call that cannot allocate raises a runtime or
    driver error naming ``cudaErrorMemoryAllocation`` / ``CUDA_ERROR_OUT_OF_MEMORY``.
    """
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc)
    return any(tag in text for tag in ("cudaErrorMemoryAllocation", "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"))


def _release_device_memory() -> None:
    cp = _cupy()
    if cp is None:  # pragma: no cover - an OOM needs cupy
        return
    try:  # cached blocks of the failed attempt, so the next task starts clean
        cp.get_default_memory_pool().free_all_blocks()
        cp.get_default_pinned_memory_pool().free_all_blocks()
    except Exception:  # noqa: BLE001 - best effort; the CPU retry does not need it
        log.debug("could not release the device memory pool")


def run_on_device(fn: Callable[[str], T], device: str | None = None) -> tuple[T, dict[str, str]]:
    """Run one study-stage's array work on the worker's device, on the CPU after a device OOM.

    Parameters
    ----------
    fn : callable
        ``fn(device)`` with ``device`` ``"cuda"`` or ``"cpu"``: moves its
        arrays with :func:`to_device` once, runs the kernels and returns host
        results (numbers, numpy masks). Called a second time, with ``"cpu"``,
        when the device runs out of memory.
    device : str, optional
        Default :func:`stage_device`.

    Returns
    -------
    (result, info)
        ``info`` is ``{}`` on the CPU path, ``{"device": "cuda"}`` on the
        device, and ``{"device": "cpu", "device_fallback": "GPU_OUT_OF_MEMORY"}``
        after a fallback (the caller records it in the stage summary).
    """
    device = stage_device() if device is None else device
    if device == "cpu":
        return fn("cpu"), {}
    try:
        return fn(device), {"device": device}
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
    # Outside the except block: the device arrays the traceback holds are freed first.
    _release_device_memory()
    log.warning("device out of memory: study-stage retried on the CPU")
    return fn("cpu"), {"device": "cpu", "device_fallback": "GPU_OUT_OF_MEMORY"}
