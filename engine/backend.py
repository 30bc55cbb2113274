"""The one place that decides numpy or cupy.

No other module imports cupy. Kernels call :func:`get_namespace` on their
input arrays and use the returned ``xp`` (array-API style, as dask-image's
dispatch layer does); cupy is imported lazily, only when a cupy array is seen
or a GPU is asked for.
"""
from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["get_namespace", "is_cupy", "to_numpy", "to_device", "gpu_available", "ndimage", "raw_kernel"]


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
