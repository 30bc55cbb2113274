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

Method (CPU). Only mask voxels are evaluated, all lesions of a call together.
The sphere is a stack of x-rows: for each ``(dz, dy)`` the admitted ``dx``
form the contiguous range ``[-w, w]``. Row sums come from prefix sums along x
of the image rows the spheres touch, each started at its lesion's bounding box
(padded by the kernel radius), so the neighbourhood sum of a voxel is
``sum over rows of P[x1 + 1] - P[x0]`` with the row clipped to the image, and
the in-image count is ``sum of (x1 - x0 + 1)``. This is exact (float64): the
prefix values are bitwise those of a prefix over the lesion's box alone. It
costs O(touched rows) + O(mask voxels x rows) instead of a full-volume
correlation, with no per-lesion pass over the volume.

Method (GPU, cupy arrays). One CUDA thread per mask voxel loops over the
sphere offsets with an explicit bounds test (a RawKernel obtained through
:func:`petcohort.engine.backend.raw_kernel`); the per-lesion reductions run on
the host on the (small) per-voxel results.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Sequence

import numpy as np

from petcohort.engine import backend
from petcohort.engine.errors import InputError
from petcohort.engine.kernels.label import label_groups, lesion_voxels
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
        d = {f.name: getattr(self, f.name) for f in fields(self)}   # asdict's deep copies cost 20 us a lesion
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


#: budget (float64 elements) of one chunk's row prefix sums in :func:`_means_cpu` (32 MiB).
_PREFIX_BUDGET = 1 << 22


def _means_cpu(image: np.ndarray, cz: np.ndarray, cy: np.ndarray, cx: np.ndarray, lo_x: np.ndarray,
               rows: np.ndarray) -> np.ndarray:
    """Neighbourhood means at centres ``(cz, cy, cx)`` (image indices) by x-row prefix sums.

    ``lo_x`` is, per centre, the first x of its lesion's box (the lesion's lowest
    x minus the kernel reach, clipped at 0). Each image row a centre's sphere
    touches is summed from that x on, in float64, one element after the other:
    the row sum of a centre is then the difference of two prefix values that
    are bitwise those of a prefix over the lesion's box alone, so a lesion's
    means do not depend on which other lesions are evaluated with it. All
    lesions are evaluated together; rows shared by centres with the same
    ``lo_x`` are summed once.
    """
    nz, ny, nx = image.shape
    m = int(cz.shape[0])
    sums = np.zeros(m, dtype=np.float64)
    counts = np.zeros(m, dtype=np.int64)
    plane = image.reshape(nz * ny, nx)
    step = max(1, _PREFIX_BUDGET // (max(len(rows), 1) * (nx + 1)))
    columns = np.arange(nx)
    for a in range(0, m, step):
        z, y, x, lo = cz[a:a + step], cy[a:a + step], cx[a:a + step], lo_x[a:a + step]
        zz = z[:, None] + rows[None, :, 0]
        yy = y[:, None] + rows[None, :, 1]
        ok = (zz >= 0) & (zz < nz) & (yy >= 0) & (yy < ny)
        key = (zz * ny + yy) * nx + lo[:, None]
        uniq, inv = np.unique(key[ok], return_inverse=True)
        row, first = np.divmod(uniq, nx)
        seg = plane[row].astype(np.float64)
        seg[columns[None, :] < first[:, None]] = 0.0         # the row starts at its box's first x
        prefix = np.zeros((uniq.shape[0], nx + 1), dtype=np.float64)
        np.cumsum(seg, axis=1, out=prefix[:, 1:])
        del seg
        flat = prefix.ravel()
        base = np.zeros(ok.shape, dtype=np.int64)
        base[ok] = inv.reshape(-1) * (nx + 1)
        part_sums, part_counts = sums[a:a + step], counts[a:a + step]   # views
        for r, w in enumerate(rows[:, 2].tolist()):
            sel = ok[:, r]
            if not sel.any():
                continue
            if sel.all():
                x0 = np.maximum(x - w, lo)
                x1 = np.minimum(x + w, nx - 1)
                part_sums += flat[base[:, r] + x1 + 1] - flat[base[:, r] + x0]
                part_counts += x1 - x0 + 1
                continue
            x0 = np.maximum(x[sel] - w, lo[sel])
            x1 = np.minimum(x[sel] + w, nx - 1)
            b = base[sel, r]
            part_sums[sel] += flat[b + x1 + 1] - flat[b + x0]
            part_counts[sel] += x1 - x0 + 1
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


def _empty(kv: int, kml: float) -> PeakResult:
    return PeakResult(None, None, None, None, kv, kml, "EMPTY_MASK")


def _peaks_cpu(image: np.ndarray, labels: np.ndarray, n: int, offsets: np.ndarray, kv: int,
               kml: float, voxels: tuple[np.ndarray, np.ndarray] | None) -> list[PeakResult]:
    idx, labs = lesion_voxels(labels) if voxels is None else voxels
    idx = np.asarray(idx, dtype=np.int64)
    labs = np.asarray(labs).astype(np.int64, copy=False)
    order, bounds = label_groups(labs, n)
    idx = idx[order[:bounds[-1]]]                       # labels 1..n, grouped, C order inside each
    group = labs[order[:bounds[-1]]]
    cz, cy, cx = np.unravel_index(idx, image.shape)
    reach_x = int(np.abs(offsets[:, 2]).max())
    # each lesion's box starts reach_x before its lowest x (clipped at the image border)
    filled = np.flatnonzero(bounds[1:] > bounds[:-1])
    low = np.zeros(n, dtype=np.int64)
    if filled.size:
        low[filled] = np.minimum.reduceat(cx, bounds[filled])
    lo_x = np.maximum(low - reach_x, 0)[group - 1]
    means = _means_cpu(image, cz, cy, cx, lo_x, _rows(offsets))
    values = image.reshape(-1)[idx].astype(np.float64)
    coords = np.stack([cz, cy, cx], axis=1)
    return _per_label(means, values, coords, bounds, n, kv, kml)


def _per_label(means: np.ndarray, values: np.ndarray, coords: np.ndarray, bounds: np.ndarray, n: int,
               kv: int, kml: float) -> list[PeakResult]:
    """PeakResults of labels 1..n from per-voxel means/values/coords grouped by label (``bounds``).

    Per label: the global peak is the largest mean, at its first voxel (C order);
    the local peak is the mean at the hottest voxel (highest mean among equally
    hot voxels, then the first). Reduced for all labels at once (segment
    reductions over the groups): the same picks as ``np.argmax`` per label.
    """
    out: list[PeakResult | None] = [None] * n
    filled = np.flatnonzero(bounds[1:] > bounds[:-1])
    if filled.size:
        starts = bounds[filled]
        group = np.repeat(np.arange(filled.size), np.diff(np.append(starts, bounds[-1])))
        pos = np.arange(means.shape[0])
        last = means.shape[0]

        def first(hit: np.ndarray) -> np.ndarray:   # first position of each group where ``hit`` holds
            return np.minimum.reduceat(np.where(hit, pos, last), starts)

        g = first(means == np.maximum.reduceat(means, starts)[group])
        hot = values == np.maximum.reduceat(values, starts)[group]
        hot_means = np.where(hot, means, -np.inf)
        h = first(hot & (hot_means == np.maximum.reduceat(hot_means, starts)[group]))
        sizes = np.diff(bounds)[filled]
        for i, gi, hi, size in zip(filled.tolist(), g.tolist(), h.tolist(), sizes.tolist()):
            out[i] = PeakResult(float(means[gi]), float(means[hi]), tuple(coords[gi].tolist()),
                                tuple(coords[hi].tolist()), kv, kml, None, int(size))
    return [_empty(kv, kml) if r is None else r for r in out]


def _peaks_gpu(image: Any, labels: Any, n: int, offsets: np.ndarray, kv: int, kml: float) -> list[PeakResult]:
    xp = backend.get_namespace(image, labels)
    flat = xp.flatnonzero(labels.ravel() != 0)
    means = backend.to_numpy(_means_gpu(image, flat, offsets))
    labs = backend.to_numpy(labels.ravel()[flat]).astype(np.int64)
    order, bounds = label_groups(labs, n)
    sel = order[:bounds[-1]]
    flat_h = backend.to_numpy(flat)[sel]
    values = backend.to_numpy(image.ravel()[flat]).astype(np.float64)[sel]
    coords = np.stack(np.unravel_index(flat_h, tuple(int(v) for v in image.shape)), axis=1)
    return _per_label(means[sel], values, coords, bounds, n, kv, kml)


def _check_inputs(image: Any, other: Any, other_name: str, spacing: Any, radius_mm: Any):
    check_3d(image, "image")
    check_3d(other, other_name)
    check_same_grid(image, other, names=("image", other_name))
    spacing = check_spacing(spacing)
    check_positive(radius_mm, "radius_mm")
    check_finite(image, "image")
    return spacing


def lesion_peaks(image: Any, labels: Any, n: int, *, spacing: Sequence[float],
                 radius_mm: float = DEFAULT_RADIUS_MM,
                 voxels: tuple[np.ndarray, np.ndarray] | None = None) -> list[PeakResult]:
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
    voxels : (indices, labels), optional
        :func:`~petcohort.engine.kernels.label.lesion_voxels` of ``labels`` when the
        caller has it already (CPU path; the GPU path finds the voxels on the device).

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
    return lesion_peaks_unchecked(image, labels, int(n), spacing=spacing, radius_mm=radius_mm, voxels=voxels)


def lesion_peaks_unchecked(image: Any, labels: Any, n: int, *, spacing: tuple[float, float, float],
                           radius_mm: float = DEFAULT_RADIUS_MM,
                           voxels: tuple[np.ndarray, np.ndarray] | None = None) -> list[PeakResult]:
    """:func:`lesion_peaks` without the boundary checks (callers that validated already)."""
    offsets = sphere_offsets(spacing, radius_mm)
    kv, kml = int(offsets.shape[0]), offsets.shape[0] * math.prod(spacing) / 1000.0
    if int(n) == 0:
        return []
    if backend.is_cupy(image) or backend.is_cupy(labels):
        return _peaks_gpu(image, labels, int(n), offsets, kv, kml)
    return _peaks_cpu(np.asarray(image), np.asarray(labels), int(n), offsets, kv, kml, voxels)


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
