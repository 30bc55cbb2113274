"""SULpeak: the IBSI global and local intensity peak, per lesion and per mask.

Definitions (docs/methods.md "SULpeak"; IBSI reference manual, features "Local
intensity peak" VJGA and "Global intensity peak" 0F91; PERCIST 1.0, Wahl et al.
J Nucl Med 2009):

* The neighbourhood of a centre voxel is every image voxel (inside the mask
  or not) whose centre lies within Euclidean distance ``r`` (``<= r``, in mm,
  anisotropic spacing honoured) of the centre voxel's centre.
* Voxels beyond the image border are absent: the mean runs over the in-image
  neighbours only (no zero/edge/reflect padding).
* Global peak = max over mask voxels of the neighbourhood mean; local peak =
  the neighbourhood mean at the hottest mask voxel (ties: highest of them).
* Default ``r = (3 / (4 pi))^(1/3) cm = 6.2035 mm`` (a 1 mL sphere).

Method (CPU). Only mask voxels are evaluated, inside each lesion's bounding
box padded by the kernel radius (every in-image neighbour of a lesion voxel
lies in that box). The sphere is a stack of x-rows: for each ``(dz, dy)`` the
admitted ``dx`` form the contiguous range ``[-w, w]``. Row sums come from a
prefix sum along x of the box, so the neighbourhood sum of a voxel is
``sum over rows of P[x1 + 1] - P[x0]`` with the row clipped to the image, and
the in-image count is ``sum of (x1 - x0 + 1)``. This is exact (float64) and
costs O(box) + O(mask voxels x rows) instead of a full-volume correlation.

Method (GPU, cupy arrays). One CUDA thread per mask voxel loops over the
sphere offsets with an explicit bounds test (a RawKernel obtained through
:func:`petcohort.engine.backend.raw_kernel`); the per-lesion reductions run on
the host on the (small) per-voxel results.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from petcohort.engine import backend
from petcohort.engine.errors import InputError
from petcohort.engine.kernels.sphere import sphere_offsets
from petcohort.engine.kernels._validate import (check_3d, check_finite, check_positive, check_same_grid,
                                                 check_spacing)

__all__ = ["PeakResult", "DEFAULT_RADIUS_MM", "peak", "lesion_peaks", "sphere_offsets", "kernel_size"]

#: (3 / (4 pi))^(1/3) cm in mm: the radius of a 1 mL sphere.
DEFAULT_RADIUS_MM = 6.2035



@dataclass(frozen=True)
class PeakResult:
    """SULpeak of one region.

    Attributes
    ----------
    global_peak : float or None
        Max over mask voxels of the neighbourhood mean (image units).
    local_peak : float or None
        Neighbourhood mean at the hottest mask voxel (ties: the highest).
    peak_voxel : (int, int, int) or None
        (z, y, x) index of the voxel where ``global_peak`` is attained (first
        in C order on ties).
    hottest_voxel : (int, int, int) or None
        (z, y, x) index of the hottest mask voxel used for ``local_peak``.
    kernel_voxels : int
        Voxels of the full (unclipped) spherical neighbourhood.
    kernel_ml : float
        ``kernel_voxels`` times the voxel volume, in mL.
    reason : str or None
        ``EMPTY_MASK`` when the region has no voxel (values are then None).
    voxels : int
        Mask voxels evaluated (0 for an empty region).
    """

    global_peak: float | None
    local_peak: float | None
    peak_voxel: tuple[int, int, int] | None
    hottest_voxel: tuple[int, int, int] | None
    kernel_voxels: int
    kernel_ml: float
    reason: str | None = None
    voxels: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("peak_voxel", "hottest_voxel"):
            d[k] = list(d[k]) if d[k] is not None else None
        return d


def kernel_size(spacing: Sequence[float], radius_mm: float = DEFAULT_RADIUS_MM) -> tuple[int, float]:
    """(voxel count, volume in mL) of the full spherical neighbourhood."""
    s = check_spacing(spacing)
    k = int(sphere_offsets(s, radius_mm).shape[0])
    return k, k * s[0] * s[1] * s[2] / 1000.0


def _rows(offsets: np.ndarray) -> np.ndarray:
    """(R, 3) array of (dz, dy, w): the sphere as x-rows ``dx in [-w, w]``."""
    rows: dict[tuple[int, int], int] = {}
    for dz, dy, dx in offsets.tolist():
        rows[(dz, dy)] = max(rows.get((dz, dy), 0), abs(dx))
    return np.array([(dz, dy, w) for (dz, dy), w in sorted(rows.items())], dtype=np.int64).reshape(-1, 3)


def _means_in_box(box: np.ndarray, cz: np.ndarray, cy: np.ndarray, cx: np.ndarray,
                  rows: np.ndarray) -> np.ndarray:
    """Neighbourhood means at centres (box coordinates) by x-row prefix sums.

    ``box`` must contain every in-image neighbour of every centre; its borders
    are either image borders or at least the kernel reach away.
    """
    bz, by, bx = box.shape
    prefix = np.zeros((bz, by, bx + 1), dtype=np.float64)
    np.cumsum(box, axis=2, dtype=np.float64, out=prefix[:, :, 1:])
    flat = prefix.ravel()
    sums = np.zeros(cz.shape[0], dtype=np.float64)
    counts = np.zeros(cz.shape[0], dtype=np.int64)
    for dz, dy, w in rows.tolist():
        zz = cz + dz
        yy = cy + dy
        ok = (zz >= 0) & (zz < bz) & (yy >= 0) & (yy < by)
        if ok.all():  # the usual case away from the image border: no fancy indexing
            x0 = np.maximum(cx - w, 0)
            x1 = np.minimum(cx + w, bx - 1)
            base = (zz * by + yy) * (bx + 1)
            sums += flat[base + x1 + 1] - flat[base + x0]
            counts += x1 - x0 + 1
            continue
        if not ok.any():
            continue
        x0 = np.maximum(cx[ok] - w, 0)
        x1 = np.minimum(cx[ok] + w, bx - 1)
        base = (zz[ok] * by + yy[ok]) * (bx + 1)
        sums[ok] += flat[base + x1 + 1] - flat[base + x0]
        counts[ok] += x1 - x0 + 1
    return sums / counts


_CUDA_SOURCE = r"""
extern "C" __global__
void sphere_mean(const double* img, const long long* centres, const long long n_centres,
                 const int* offs, const int n_off, const int nz, const int ny, const int nx,
                 double* means) {
    long long i = (long long)blockDim.x * blockIdx.x + threadIdx.x;
    if (i >= n_centres) return;
    long long c = centres[i];
    long long plane = (long long)ny * nx;
    int z = (int)(c / plane);
    long long rem = c - (long long)z * plane;
    int y = (int)(rem / nx);
    int x = (int)(rem - (long long)y * nx);
    double s = 0.0;
    long long n = 0;
    for (int k = 0; k < n_off; ++k) {
        int zz = z + offs[3 * k];
        int yy = y + offs[3 * k + 1];
        int xx = x + offs[3 * k + 2];
        if (zz < 0 || zz >= nz || yy < 0 || yy >= ny || xx < 0 || xx >= nx) continue;
        s += img[(long long)zz * plane + (long long)yy * nx + xx];
        n += 1;
    }
    means[i] = s / (double)n;
}
"""


def _means_gpu(image: Any, flat_centres: Any, offsets: np.ndarray) -> Any:
    """Neighbourhood means at flat indices ``flat_centres`` (cupy), one thread each."""
    xp = backend.get_namespace(image)
    kern = backend.raw_kernel(_CUDA_SOURCE, "sphere_mean")
    img = xp.ascontiguousarray(image, dtype=xp.float64)
    centres = xp.ascontiguousarray(flat_centres, dtype=xp.int64)
    offs = xp.asarray(np.ascontiguousarray(offsets, dtype=np.int32))
    m = int(centres.shape[0])
    means = xp.empty(m, dtype=xp.float64)
    if m == 0:
        return means
    threads = 256
    blocks = (m + threads - 1) // threads
    nz, ny, nx = (int(v) for v in img.shape)
    kern((blocks,), (threads,), (img, centres, np.int64(m), offs, np.int32(offsets.shape[0]),
                                 np.int32(nz), np.int32(ny), np.int32(nx), means))
    return means


def _result(means: np.ndarray, values: np.ndarray, coords: np.ndarray, kv: int, kml: float) -> PeakResult:
    """Reduce per-voxel neighbourhood means of one region to a PeakResult."""
    g = int(np.argmax(means))
    hot = np.flatnonzero(values == values.max())
    h = int(hot[np.argmax(means[hot])])
    return PeakResult(float(means[g]), float(means[h]), tuple(int(v) for v in coords[g]),
                      tuple(int(v) for v in coords[h]), kv, kml, None, int(means.shape[0]))


def _empty(kv: int, kml: float) -> PeakResult:
    return PeakResult(None, None, None, None, kv, kml, "EMPTY_MASK")


def _peaks_cpu(image: np.ndarray, labels: np.ndarray, n: int, offsets: np.ndarray, kv: int,
               kml: float) -> list[PeakResult]:
    import scipy.ndimage as ndi  # noqa: PLC0415

    reach = np.abs(offsets).max(axis=0)
    rows = _rows(offsets)
    out: list[PeakResult] = []
    for lab, sl in enumerate(ndi.find_objects(labels, max_label=n), start=1):
        if sl is None:
            out.append(_empty(kv, kml))
            continue
        lo = [max(s.start - int(r), 0) for s, r in zip(sl, reach)]
        hi = [min(s.stop + int(r), dim) for s, r, dim in zip(sl, reach, image.shape)]
        box_slices = tuple(slice(a, b) for a, b in zip(lo, hi))
        sub_labels = labels[box_slices]
        cz, cy, cx = np.nonzero(sub_labels == lab)
        box = image[box_slices]
        means = _means_in_box(box, cz, cy, cx, rows)
        coords = np.stack([cz + lo[0], cy + lo[1], cx + lo[2]], axis=1)
        out.append(_result(means, box[cz, cy, cx].astype(np.float64), coords, kv, kml))
    return out


def _peaks_gpu(image: Any, labels: Any, n: int, offsets: np.ndarray, kv: int, kml: float) -> list[PeakResult]:
    xp = backend.get_namespace(image, labels)
    flat = xp.flatnonzero(labels.ravel())
    means = backend.to_numpy(_means_gpu(image, flat, offsets))
    labs = backend.to_numpy(labels.ravel()[flat]).astype(np.int64)
    values = backend.to_numpy(image.ravel()[flat]).astype(np.float64)
    flat_h = backend.to_numpy(flat)
    coords = np.stack(np.unravel_index(flat_h, tuple(int(v) for v in image.shape)), axis=1)
    order = np.argsort(labs, kind="stable")  # keeps C order inside each label
    bounds = np.searchsorted(labs[order], np.arange(1, n + 2))
    out: list[PeakResult] = []
    for i in range(n):
        sel = order[bounds[i]:bounds[i + 1]]
        out.append(_result(means[sel], values[sel], coords[sel], kv, kml) if sel.size else _empty(kv, kml))
    return out


def _check_inputs(image: Any, other: Any, other_name: str, spacing: Any, radius_mm: Any):
    check_3d(image, "image")
    check_3d(other, other_name)
    check_same_grid(image, other, names=("image", other_name))
    spacing = check_spacing(spacing)
    check_positive(radius_mm, "radius_mm")
    check_finite(image, "image")
    return spacing


def lesion_peaks(image: Any, labels: Any, n: int, *, spacing: Sequence[float],
                 radius_mm: float = DEFAULT_RADIUS_MM) -> list[PeakResult]:
    """Global and local peak of every labelled lesion.

    Parameters
    ----------
    image : (Z, Y, X) ndarray (numpy or cupy), float
        SUL, SUVbw or any scalar image; must be finite.
    labels : (Z, Y, X) ndarray of int, same grid and namespace
        0 = background, 1..n = lesions (e.g. from :func:`label`).
    n : int
        Number of labels; labels above ``n`` are ignored.
    spacing : (sz, sy, sx) mm
    radius_mm : float, mm
        Sphere radius (default 6.2035 mm, a 1 mL sphere).

    Returns
    -------
    list of PeakResult, length n
        Entry ``i`` is lesion ``i + 1``; a label with no voxel gives
        ``reason="EMPTY_MASK"``.

    Raises
    ------
    GridError ``GRID_MISMATCH``; InputError ``IMAGE_NOT_FINITE``, ``BAD_GEOMETRY``, ``BAD_VALUE``.
    """
    spacing = _check_inputs(image, labels, "labels", spacing, radius_mm)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise InputError("BAD_VALUE", f"n must be a non-negative integer label count, got {n!r}")
    return lesion_peaks_unchecked(image, labels, int(n), spacing=spacing, radius_mm=radius_mm)


def lesion_peaks_unchecked(image: Any, labels: Any, n: int, *, spacing: tuple[float, float, float],
                           radius_mm: float = DEFAULT_RADIUS_MM) -> list[PeakResult]:
    """:func:`lesion_peaks` without the boundary checks (callers that validated already)."""
    offsets = sphere_offsets(spacing, radius_mm)
    kv, kml = int(offsets.shape[0]), offsets.shape[0] * math.prod(spacing) / 1000.0
    if int(n) == 0:
        return []
    if backend.is_cupy(image) or backend.is_cupy(labels):
        return _peaks_gpu(image, labels, int(n), offsets, kv, kml)
    return _peaks_cpu(np.asarray(image), np.asarray(labels), int(n), offsets, kv, kml)


def peak(image: Any, mask: Any, *, spacing: Sequence[float], radius_mm: float = DEFAULT_RADIUS_MM) -> PeakResult:
    """Global and local peak over all voxels of ``mask`` (one region).

    Parameters
    ----------
    image : (Z, Y, X) ndarray (numpy or cupy), float, finite
    mask : (Z, Y, X) ndarray, same grid; non-zero = region
    spacing : (sz, sy, sx) mm
    radius_mm : float, mm

    Returns
    -------
    PeakResult
        ``reason="EMPTY_MASK"`` and None values when the mask is empty.
    """
    spacing = _check_inputs(image, mask, "mask", spacing, radius_mm)
    xp = backend.get_namespace(image, mask)
    region = (mask != 0).astype(xp.int32)
    if not bool(region.any()):
        return _empty(*kernel_size(spacing, radius_mm))
    return lesion_peaks_unchecked(image, region, 1, spacing=spacing, radius_mm=radius_mm)[0]
