"""Resampling one axis-aligned ``(Z, Y, X)`` grid onto another (SimpleITK).

Used at ingest to put the CT on the PET grid. SimpleITK images are indexed
``(x, y, z)`` with LPS physical coordinates, which is our convention with
the axis order reversed; ``GetImageFromArray`` does that reversal.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk

from petcohort.engine.errors import GridError

__all__ = ["resample_to_grid"]

_INTERPOLATORS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}


def _triple(name: str, value: Sequence[float], positive: bool = False) -> tuple[float, float, float]:
    if len(value) != 3:
        raise GridError("BAD_GEOMETRY", f"{name} must have 3 values (z, y, x), got {value!r}")
    out = tuple(float(v) for v in value)
    if positive and min(out) <= 0:
        raise GridError("BAD_GEOMETRY", f"{name} must be > 0, got {value!r}")
    return out  # type: ignore[return-value]


def resample_to_grid(image: np.ndarray, src_spacing: Sequence[float], src_origin: Sequence[float],
                     dst_shape: Sequence[int], dst_spacing: Sequence[float], dst_origin: Sequence[float], *,
                     interpolation: str = "linear", default: float = -1000) -> np.ndarray:
    """Resample ``image`` onto the grid ``(dst_shape, dst_spacing, dst_origin)``.

    Parameters
    ----------
    image : (Z, Y, X) ndarray
        E.g. CT in HU.
    src_spacing, src_origin, dst_spacing, dst_origin : 3 floats
        mm, array-axis order (z, y, x), LPS; origin = centre of voxel [0, 0, 0].
    dst_shape : 3 ints
    interpolation : {"linear", "nearest"}
        Linear for intensities (HU), nearest for labels.
    default : float
        Value outside the source image (air, -1000 HU, for CT).

    Returns
    -------
    (Z, Y, X) ndarray
        Same dtype as ``image``: integer images are rounded after linear
        interpolation (computed in float32), so HU stay HU.
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise GridError("NOT_3D", f"image must be (Z, Y, X), got shape {image.shape}")
    if interpolation not in _INTERPOLATORS:
        raise GridError("BAD_VALUE", f"interpolation must be 'linear' or 'nearest', got {interpolation!r}")
    src_spacing, dst_spacing = _triple("src_spacing", src_spacing, True), _triple("dst_spacing", dst_spacing, True)
    src_origin, dst_origin = _triple("src_origin", src_origin), _triple("dst_origin", dst_origin)
    shape = tuple(int(s) for s in dst_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise GridError("BAD_GEOMETRY", f"dst_shape must be 3 positive ints, got {dst_shape!r}")
    integer = image.dtype.kind in "iub"
    work = image.astype(np.float32) if (integer and interpolation == "linear") or image.dtype == bool else image
    src = sitk.GetImageFromArray(np.ascontiguousarray(work))
    src.SetSpacing(src_spacing[::-1])
    src.SetOrigin(src_origin[::-1])
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([shape[2], shape[1], shape[0]])
    resampler.SetOutputSpacing(dst_spacing[::-1])
    resampler.SetOutputOrigin(dst_origin[::-1])
    resampler.SetOutputDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    resampler.SetInterpolator(_INTERPOLATORS[interpolation])
    resampler.SetDefaultPixelValue(float(default))
    resampler.SetTransform(sitk.Transform())
    out = sitk.GetArrayFromImage(resampler.Execute(src))
    if integer:
        info = np.iinfo(image.dtype) if image.dtype != bool else None
        if info is not None:
            out = np.clip(np.rint(out), info.min, info.max)
        return out.astype(image.dtype)
    return out.astype(image.dtype, copy=False)
