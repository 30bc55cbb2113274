"""Boundary checks shared by the kernels (validate once, at the public entry).

Each check raises a :class:`~petcohort.engine.errors.PetCohortError` subclass
with a reason code and a message naming the parameter, the value received and
what was expected.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from petcohort.engine import backend
from petcohort.engine.errors import GridError, InputError

__all__ = ["check_3d", "check_same_grid", "check_finite", "check_spacing", "check_connectivity",
           "check_positive", "check_fraction"]


def check_3d(array: Any, name: str) -> None:
    """Raise ``InputError`` ``NOT_3D`` unless ``array`` is a 3-D array."""
    if not hasattr(array, "ndim") or not hasattr(array, "shape"):
        raise InputError("NOT_AN_ARRAY", f"{name} must be a numpy/cupy array, got {type(array).__name__}")
    if array.ndim != 3:
        raise InputError("NOT_3D", f"{name} must be a (Z, Y, X) array, got shape {tuple(array.shape)}")


def check_same_grid(reference: Any, other: Any, *, names: tuple[str, str] = ("image", "mask")) -> None:
    """Raise ``GridError`` ``GRID_MISMATCH`` unless both arrays have the same shape.

    Parameters
    ----------
    reference, other : (Z, Y, X) arrays
        Arrays that must share one voxel grid (spacing/origin are the caller's:
        kernels receive a single ``spacing``).
    names : (str, str)
        Parameter names used in the message.
    """
    if tuple(reference.shape) != tuple(other.shape):
        raise GridError("GRID_MISMATCH",
                        f"{names[1]} has shape {tuple(other.shape)}, expected the shape of "
                        f"{names[0]} {tuple(reference.shape)} (same voxel grid)")


def check_finite(image: Any, name: str = "image") -> None:
    """Raise ``InputError`` ``IMAGE_NOT_FINITE`` when ``image`` holds NaN or inf."""
    xp = backend.get_namespace(image)
    if np.issubdtype(image.dtype, np.integer) or image.dtype == bool:  # dtypes are numpy's in cupy too
        return
    finite = bool(xp.isfinite(image).all())
    if not finite:
        bad = int((~xp.isfinite(image)).sum())
        raise InputError("IMAGE_NOT_FINITE",
                         f"{name} holds {bad} NaN/inf voxel(s); expected finite values everywhere")


def check_spacing(spacing: Sequence[float] | None) -> tuple[float, float, float]:
    """Parse ``spacing`` into three positive finite floats (mm, (sz, sy, sx)).

    Raises ``InputError`` ``BAD_GEOMETRY`` otherwise.
    """
    try:
        values = tuple(float(s) for s in spacing)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise InputError("BAD_TYPE",
                         f"spacing must be three positive numbers (mm, z/y/x), got {spacing!r}") from None
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise InputError("BAD_GEOMETRY", f"spacing must be three positive numbers (mm, z/y/x), got {spacing!r}")
    return values  # type: ignore[return-value]


def check_connectivity(connectivity: int) -> int:
    """Raise ``InputError`` ``BAD_CONNECTIVITY`` unless ``connectivity`` is 6, 18 or 26."""
    if connectivity not in (6, 18, 26) or isinstance(connectivity, bool):
        raise InputError("BAD_CONNECTIVITY", f"connectivity must be 6, 18 or 26, got {connectivity!r}")
    return int(connectivity)


def check_positive(value: Any, name: str) -> float:
    """Raise ``InputError`` ``BAD_VALUE`` unless ``value`` is a finite number > 0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError("BAD_TYPE", f"{name} must be a positive number, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise InputError("BAD_VALUE", f"{name} must be a positive number, got {value!r}")
    return v


def check_fraction(value: Any, name: str) -> float:
    """Raise ``InputError`` ``BAD_VALUE`` unless ``0 < value <= 1``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError("BAD_TYPE", f"{name} must be a number in (0, 1], got {value!r}") from None
    if not (0 < v <= 1):
        raise InputError("BAD_VALUE", f"{name} must be a number in (0, 1], got {value!r}")
    return v
