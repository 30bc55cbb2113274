"""Resampling a (Z, Y, X) volume through an affine map of voxel indices (pure; numpy/scipy).

Semantics are ITK's ``ResampleImageFilter`` (what ``ants.apply_transforms`` runs),
so a transform estimated by ANTs resamples the same way here:

* an output voxel ``i`` reads the input at the continuous index ``c = M i + o``;
* it is inside the input when ``-0.5 <= c_d < n_d - 0.5`` on every axis
  (ITK ``ImageFunction::IsInsideBuffer``), else it gets 0;
* ``order=0``: nearest neighbour, halves rounded up (ITK ``RoundHalfIntegerUp``),
  exact for label values;
* ``order=1``: trilinear; within half a voxel of the input's edge the edge value is
  used (ITK clamps the upper neighbour the same way; at the lower edge ITK
  extrapolates the edge gradient, a difference confined to that half-voxel shell).

Why not ANTs: ``antsApplyTransforms`` converts both images to double precision and
copies them several times (about 17x a float32 PET's bytes of peak memory growth on a
whole-body study, measured with ``benchmarks/bench_pipeline.py``); this needs the
input, a one-voxel edge-padded copy and the output.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["resample_affine", "inside_mask"]


def inside_mask(matrix: np.ndarray, offset: np.ndarray, in_shape: Sequence[int],
                out_shape: Sequence[int]) -> np.ndarray:
    """Boolean (Z, Y, X) mask of output voxels whose continuous input index is inside the input.

    Computed row by row in closed form: along the last output axis every input
    coordinate is affine in ``x``, so the inside voxels of a row form one interval.
    """
    m = np.asarray(matrix, float)
    o = np.asarray(offset, float)
    nz, ny, nx = (int(s) for s in out_shape)
    z = np.arange(nz, dtype=float)[:, None]
    y = np.arange(ny, dtype=float)[None, :]
    lo_x = np.zeros((nz, ny))
    hi_x = np.full((nz, ny), float(nx))            # exclusive
    for d in range(3):
        base = m[d, 0] * z + m[d, 1] * y + o[d]     # coordinate d at x = 0, shape (nz, ny)
        lo, hi = -0.5, int(in_shape[d]) - 0.5
        slope = m[d, 2]
        if slope > 0:       # lo <= base + slope x < hi
            lo_x = np.maximum(lo_x, np.ceil((lo - base) / slope))
            hi_x = np.minimum(hi_x, np.ceil((hi - base) / slope))
        elif slope < 0:
            lo_x = np.maximum(lo_x, np.floor((hi - base) / slope) + 1)
            hi_x = np.minimum(hi_x, np.floor((lo - base) / slope) + 1)
        else:
            inside = (base >= lo) & (base < hi)
            hi_x = np.where(inside, hi_x, 0.0)
    xs = np.arange(nx)
    return (xs >= lo_x[..., None]) & (xs < hi_x[..., None])


def resample_affine(moving: np.ndarray, matrix: np.ndarray, offset: np.ndarray, out_shape: Sequence[int], *,
                    order: int, dtype: type | np.dtype = np.float32) -> np.ndarray:
    """``moving`` sampled at ``matrix @ i + offset`` for every index ``i`` of ``out_shape``.

    Parameters
    ----------
    moving : (Z, Y, X) ndarray  input volume (any real dtype)
    matrix : (3, 3) array, offset : (3,) array  output index -> input continuous index
    out_shape : (3,) ints
    order : {0, 1}  nearest neighbour (labels) or trilinear
    dtype : output dtype (float32 default; an integer dtype with ``order=0`` keeps labels)

    Returns
    -------
    ndarray of ``out_shape`` and ``dtype``; 0 outside the input (module docstring).
    """
    from scipy import ndimage

    if order not in (0, 1):
        raise ValueError(f"order must be 0 or 1, got {order!r}")
    moving = np.asarray(moving)
    if moving.ndim != 3:
        raise ValueError(f"moving must be 3-D, got shape {moving.shape}")
    work = moving if order == 0 or moving.dtype.kind == "f" else moving.astype(np.float32)
    padded = np.pad(work, 1, mode="edge")           # the clamped edge of ITK's interpolators
    out = ndimage.affine_transform(padded, np.asarray(matrix, float), offset=np.asarray(offset, float) + 1.0,
                                   output_shape=tuple(int(s) for s in out_shape), output=np.dtype(dtype),
                                   order=order, mode="constant", cval=0.0, prefilter=False)
    del padded
    out[~inside_mask(matrix, offset, moving.shape, out_shape)] = 0
    return out
