"""PERCIST normal-tissue reference: liver sphere, blood-pool fallback.

PERCIST 1.0 (Wahl RL, Jacene H, Kasamon Y, Lodge MA. "From RECIST to PERCIST:
evolving considerations for PET response criteria in solid tumors", J Nucl Med
2009;50 Suppl 1:122S-150S) measures normal-tissue activity as the SUL mean and
SD of a 3 cm diameter spherical ROI in the normal right lobe of the liver, and,
when the liver is abnormal, of a 1 cm diameter ROI in the descending thoracic
aorta extended over 2 cm along the z axis (blood pool). O JH, Lodge MA, Wahl RL,
"Practical PERCIST", Radiology 2016;280:576-584 keeps the same regions.

Automated placement (our choices, deterministic; docs/methods.md "PERCIST 1.0"):

Liver sphere
    * Admissible centres: voxels whose centre is farther than the sphere
      radius from every non-liver voxel centre (anisotropic Euclidean distance
      transform in mm; the image border counts as non-liver), so every voxel
      of the sphere (centre within ``radius`` of the sphere centre) is liver.
    * Away from lesions: farther than ``radius + lesion_margin_mm`` from every
      lesion voxel (default margin 10 mm, about two PET resolution FWHM, so
      lesion spill-out does not reach the sphere).
    * In the right lobe: patient right is low X (LPS, docs/contracts.md). The
      liver centroid lies in the (larger) right lobe, so every liver voxel
      with ``x <= centroid x`` is taken as "right part"; admissible centres
      must lie there.
    * Choice: the admissible centre closest (mm) to the centroid of the right
      part; ties by greater depth in the liver, then lowest C-order index.
Blood pool (fallback when the liver is missing or has no admissible centre)
    * A cylinder of ``aorta_diameter_mm`` (1 cm) diameter, axis along Z, over
      ``aorta_length_mm`` (2 cm), fully inside ``aorta`` minus lesion voxels
      (binary erosion by the cylinder footprint).
    * Descending part: only centres at or posterior to the aorta mask's
      centroid (Y grows posterior), which excludes the anterior root and
      ascending aorta when the mask holds the whole vessel (as the synthetic
      phantom's does); the whole mask when that part has no room.
    * Choice: the admissible centre deepest in the aorta mask (anisotropic
      distance transform): the central voxels; ties (a straight tube) by
      closeness to the centroid of the admissible centres, then lowest
      C-order index.

SD is the sample standard deviation (``ddof=1``) of the ROI voxels.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from petcohort.engine import backend
from petcohort.engine.errors import InputError
from petcohort.engine.kernels._validate import check_3d, check_finite, check_positive, check_same_grid, check_spacing
from petcohort.engine.kernels.label import bounding_box
from petcohort.engine.kernels.sphere import sphere_offsets

__all__ = ["Reference", "LiverSite", "liver_site", "liver_reference", "blood_pool_reference",
           "cylinder_offsets"]


@dataclass(frozen=True)
class Reference:
    """SUL statistics of the normal-tissue reference region.

    Attributes
    ----------
    mean, sd : float
        SUL mean and sample SD (ddof=1) over the ROI voxels.
    n_voxels : int
        Voxels in the ROI.
    centre_zyx : (int, int, int)
        Voxel index of the ROI centre.
    source : {"liver", "blood_pool"}
    fallback_reason : str or None
        Why the liver was not used (``NO_LIVER_MASK``, ``LIVER_NO_ROOM``) when
        ``source == "blood_pool"``.
    """

    mean: float
    sd: float
    n_voxels: int
    centre_zyx: tuple[int, int, int]
    source: str = "liver"
    fallback_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["centre_zyx"] = list(self.centre_zyx)
        return d


def cylinder_offsets(radius_mm: float, length_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """Voxel offsets (k, 3) int of a Z-axis cylinder: in-plane distance <= radius, |dz| <= length/2."""
    sz, sy, sx = spacing
    hz = int(math.floor(length_mm / 2 / sz))
    hy, hx = (int(math.floor(radius_mm / s)) for s in (sy, sx))
    z, y, x = np.mgrid[-hz:hz + 1, -hy:hy + 1, -hx:hx + 1]
    inside = (y * sy) ** 2 + (x * sx) ** 2 <= radius_mm ** 2
    return np.stack([z[inside], y[inside], x[inside]], axis=1)


def _roi_stats(sul: np.ndarray, centre: tuple[int, int, int], offsets: np.ndarray) -> tuple[float, float, int]:
    idx = offsets + np.asarray(centre)
    values = sul[idx[:, 0], idx[:, 1], idx[:, 2]].astype(np.float64)
    sd = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return float(values.mean()), sd, int(values.size)


def _depth(mask_crop: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distance (mm) from each voxel to the nearest non-mask voxel; outside the crop counts as non-mask."""
    import scipy.ndimage as ndi  # noqa: PLC0415

    padded = np.pad(mask_crop, 1, constant_values=False)
    return ndi.distance_transform_edt(padded, sampling=spacing)[1:-1, 1:-1, 1:-1]


def _clear_of_lesions(lesions: np.ndarray | None, crop: tuple[slice, ...], cand: np.ndarray, reach_mm: float,
                      spacing: Sequence[float]) -> np.ndarray | None:
    """Whether each candidate voxel (crop indices, ``(n, 3)``) is farther than ``reach_mm`` from every lesion voxel.

    None when no lesion voxel lies in the crop grown by ``reach_mm`` (a lesion
    outside that box is farther than ``reach_mm`` from every crop voxel).
    The distance is the one a Euclidean distance transform of the lesion-free
    region gives (``scipy.ndimage.distance_transform_edt`` with ``sampling``):
    ``sqrt((dz sz)^2 + (dy sy)^2 + (dx sx)^2)`` to the nearest lesion voxel.
    Only the candidates are evaluated: a k-d tree of the lesion voxels decides
    every candidate clearly nearer or farther than ``reach_mm``, and the few
    within a rounding tolerance of it get the transform's formula exactly.
    """
    if lesions is None:
        return None
    grow = [int(math.ceil(reach_mm / s)) + 1 for s in spacing]
    big = tuple(slice(max(0, c.start - g), min(n, c.stop + g)) for c, g, n in zip(crop, grow, lesions.shape))
    found = np.argwhere(lesions[big] != 0)
    if found.shape[0] == 0:
        return None
    from scipy.spatial import cKDTree  # noqa: PLC0415 - keep import cost off module import

    sp = np.asarray(spacing, dtype=np.float64)
    at = np.asarray(cand, dtype=np.int64) + np.array([c.start - b.start for c, b in zip(crop, big)])
    tree = cKDTree(found * sp)
    tol = 1e-6 * max(1.0, reach_mm)
    d, _ = tree.query(at * sp, k=1, distance_upper_bound=reach_mm + tol)
    clear = d > reach_mm + tol
    for i in np.flatnonzero(np.abs(d - reach_mm) <= tol):  # at the boundary: the transform's own arithmetic
        near = found[tree.query_ball_point(at[i] * sp, reach_mm + 2 * tol)]
        delta = (near - at[i]).astype(np.float64) * sp
        clear[i] = float(np.sqrt(((delta[:, 0] ** 2 + delta[:, 1] ** 2) + delta[:, 2] ** 2).min())) > reach_mm
    return clear


@dataclass(frozen=True)
class LiverSite:
    """The lesion-independent part of the liver sphere placement, for one liver mask, spacing and radius.

    Several lesion sets of one scan (one per segmentation source) share it:
    :func:`liver_reference` accepts it in place of the liver mask and then
    only adds the lesion clearance. Build it with :func:`liver_site`.

    Attributes
    ----------
    shape : (int, int, int)
        Shape of the liver mask (the scan's grid).
    spacing : (sz, sy, sx) mm
    radius : float
        Sphere radius (mm).
    crop : tuple of slice
        Bounding box of the liver.
    depth : ndarray of float64
        Distance (mm) from each crop voxel to the nearest non-liver voxel.
    admissible : ndarray of bool
        Crop voxels deep enough for the sphere and in the right part (before lesion clearance).
    target : (3,) ndarray, mm
        Centroid of the right part, in crop coordinates times spacing.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    radius: float
    crop: tuple[slice, ...]
    depth: np.ndarray
    admissible: np.ndarray
    target: np.ndarray


def liver_site(liver: Any, *, spacing: Sequence[float], diameter_mm: float = 30.0) -> LiverSite | None:
    """:class:`LiverSite` of a liver mask (non-zero = liver); None when the mask is empty."""
    spacing = check_spacing(spacing)
    radius = check_positive(diameter_mm, "diameter_mm") / 2
    liver = backend.to_numpy(liver) != 0
    if not liver.any():
        return None
    crop = bounding_box(liver)
    lv = liver[crop]
    depth_map = _depth(lv, spacing)
    ok = depth_map > radius
    # right part: liver voxels at or right (low X) of the liver centroid
    coords = np.nonzero(lv)
    cx = coords[2].mean()
    right = coords[2] <= cx
    ok[:, :, int(math.floor(cx)) + 1:] = False
    target = np.array([c[right].mean() for c in coords]) * np.asarray(spacing)
    return LiverSite(tuple(int(n) for n in liver.shape), spacing, radius, crop,  # type: ignore[arg-type]
                     depth_map, ok, target)


def _place_liver_sphere(site: LiverSite, lesions: np.ndarray | None, margin: float) -> tuple[int, int, int] | None:
    spacing, radius = site.spacing, site.radius
    ok = site.admissible.copy()
    cand = np.argwhere(ok)
    clear = _clear_of_lesions(lesions, site.crop, cand, radius + margin, spacing) if cand.size else None
    if clear is not None:
        ok[tuple(cand[~clear].T)] = False
        cand = cand[clear]
    if cand.size == 0:
        return None
    d2 = (((cand * np.asarray(spacing)) - site.target) ** 2).sum(axis=1)
    depth = site.depth[ok]  # argwhere and boolean indexing share C order
    flat = np.ravel_multi_index(cand.T, site.admissible.shape)
    best = np.lexsort((flat, -np.round(depth, 6), np.round(d2, 6)))[0]
    return tuple(int(c + s.start) for c, s in zip(cand[best], site.crop))  # type: ignore[return-value]


def blood_pool_reference(sul: Any, aorta: Any, *, spacing: Sequence[float], lesions: Any = None,
                         diameter_mm: float = 10.0, length_mm: float = 20.0,
                         fallback_reason: str | None = None) -> Reference:
    """SUL mean/SD of a 1 cm x 2 cm Z-axis cylinder at the centre of the aorta mask.

    Parameters
    ----------
    sul : (Z, Y, X) ndarray of float, SUL
    aorta : (Z, Y, X) ndarray, non-zero = descending thoracic aorta
    spacing : (sz, sy, sx) mm
    lesions : (Z, Y, X) ndarray or None
        Lesion voxels (non-zero) are never part of the cylinder.
    diameter_mm, length_mm : float
        Cylinder size (PERCIST: 10 mm diameter over 20 mm of z).
    fallback_reason : str or None
        Recorded on the result (why the liver was not used).

    Raises
    ------
    InputError
        ``NO_REFERENCE`` when the mask is missing, empty or too thin for the cylinder.
    """
    spacing = check_spacing(spacing)
    check_positive(diameter_mm, "diameter_mm")
    check_positive(length_mm, "length_mm")
    sul = backend.to_numpy(sul)
    check_3d(sul, "sul")
    if aorta is None:
        raise InputError("NO_REFERENCE", f"no blood-pool reference: aorta mask is None "
                         f"(liver not usable: {fallback_reason})")
    aorta = backend.to_numpy(aorta) != 0
    check_same_grid(sul, aorta, names=("sul", "aorta"))
    if lesions is not None:
        lesions = backend.to_numpy(lesions)
        check_same_grid(sul, lesions, names=("sul", "lesions"))
        aorta = aorta & (lesions == 0)
    if not aorta.any():
        raise InputError("NO_REFERENCE", f"no blood-pool reference: aorta mask is empty "
                         f"(liver not usable: {fallback_reason})")
    import scipy.ndimage as ndi  # noqa: PLC0415

    offsets = cylinder_offsets(diameter_mm / 2, length_mm, spacing)
    crop = bounding_box(aorta)
    ao = aorta[crop]
    half = np.abs(offsets).max(axis=0)
    foot = np.zeros(tuple(2 * h + 1 for h in half), dtype=bool)
    foot[tuple((offsets + half).T)] = True
    # the border counts as non-aorta: erode a zero-padded crop
    pad = [(int(h), int(h)) for h in half]
    ok = ndi.binary_erosion(np.pad(ao, pad), structure=foot, border_value=0)
    ok = ok[tuple(slice(int(h), int(h) + n) for h, n in zip(half, ao.shape))]
    if not ok.any():
        raise InputError("NO_REFERENCE",
                         f"no blood-pool reference: the aorta mask holds no {diameter_mm} mm x {length_mm} mm "
                         f"cylinder clear of lesions (liver not usable: {fallback_reason})")
    # Descending aorta: posterior (Y grows posterior in LPS) to the mask's
    # centroid, which leaves out the anterior root and ascending aorta when
    # the mask holds the whole vessel; the whole mask if that part has no room.
    posterior = ok.copy()
    posterior[:, : int(math.ceil(np.nonzero(ao)[1].mean())), :] = False
    if posterior.any():
        ok = posterior
    cand = np.argwhere(ok)
    depth = np.round(_depth(ao, spacing)[ok], 6)
    mid = ((cand - cand.mean(axis=0)) * np.asarray(spacing)) ** 2
    flat = np.ravel_multi_index(cand.T, ao.shape)
    best = np.lexsort((flat, np.round(mid.sum(axis=1), 6), -depth))[0]
    centre = tuple(int(c + s.start) for c, s in zip(cand[best], crop))
    mean, sd, n = _roi_stats(sul, centre, offsets)  # type: ignore[arg-type]
    return Reference(mean, sd, n, centre, "blood_pool", fallback_reason)  # type: ignore[arg-type]


def liver_reference(sul: Any, liver: Any, *, spacing: Sequence[float], lesions: Any = None, aorta: Any = None,
                    diameter_mm: float = 30.0, lesion_margin_mm: float = 10.0,
                    aorta_diameter_mm: float = 10.0, aorta_length_mm: float = 20.0,
                    aorta_lesions: Any = None) -> Reference:
    """PERCIST reference: a sphere in the right liver lobe, else the blood pool.

    Parameters
    ----------
    sul : (Z, Y, X) ndarray of float, SUL (SUVbw * LBM / weight)
    liver : (Z, Y, X) ndarray, LiverSite or None
        Liver mask (non-zero = liver), or its :func:`liver_site` (built with
        this ``spacing`` and ``diameter_mm``; shared by several lesion sets
        of one scan). None or empty: blood-pool fallback.
    spacing : (sz, sy, sx) mm
    lesions : (Z, Y, X) ndarray or None
        Lesion mask or labels (non-zero = lesion); the sphere stays
        ``radius + lesion_margin_mm`` away from every lesion voxel.
    aorta : (Z, Y, X) ndarray or None
        Descending-aorta mask for the fallback.
    diameter_mm : float
        Sphere diameter (PERCIST: 30 mm).
    lesion_margin_mm : float
        Extra clearance between the sphere surface and lesion voxels.
    aorta_diameter_mm, aorta_length_mm : float
        Fallback cylinder (PERCIST: 10 mm diameter over 20 mm of z).
    aorta_lesions : (Z, Y, X) ndarray or None
        What the fallback cylinder keeps away from, when it is not ``lesions``
        (None: ``lesions``).

    Returns
    -------
    Reference
        ``source="liver"``, or ``source="blood_pool"`` with ``fallback_reason``.

    Raises
    ------
    InputError
        ``NO_REFERENCE`` when neither region can be placed; ``NOT_3D``,
        ``GRID_MISMATCH``, ``IMAGE_NOT_FINITE``, ``BAD_GEOMETRY``, ``BAD_VALUE``.
    """
    spacing = check_spacing(spacing)
    radius = check_positive(diameter_mm, "diameter_mm") / 2
    if not (isinstance(lesion_margin_mm, (int, float)) and lesion_margin_mm >= 0):
        raise InputError("BAD_VALUE", f"lesion_margin_mm must be a number >= 0, got {lesion_margin_mm!r}")
    sul = backend.to_numpy(sul)
    check_3d(sul, "sul")
    check_finite(sul, "sul")
    lesion_arr = None
    if lesions is not None:
        lesion_arr = backend.to_numpy(lesions)
        check_same_grid(sul, lesion_arr, names=("sul", "lesions"))
    site = liver
    if liver is not None and not isinstance(liver, LiverSite):
        check_same_grid(sul, liver, names=("sul", "liver"))
        site = liver_site(liver, spacing=spacing, diameter_mm=diameter_mm)
    reason = "NO_LIVER_MASK"  # also for an empty mask (no site)
    if site is not None:
        check_same_grid(sul, site, names=("sul", "liver"))
        if site.spacing != spacing or site.radius != radius:
            raise InputError("BAD_VALUE", f"the liver site was built for spacing {site.spacing} and radius "
                                          f"{site.radius} mm, not {spacing} and {radius} mm")
        centre = _place_liver_sphere(site, lesion_arr, float(lesion_margin_mm))
        if centre is not None:
            # the same sphere as SULpeak's neighbourhood (one implementation: kernels.sphere)
            mean, sd, n = _roi_stats(sul, centre, sphere_offsets(spacing, radius))
            return Reference(mean, sd, n, centre, "liver", None)
        reason = "LIVER_NO_ROOM"
    return blood_pool_reference(sul, aorta, spacing=spacing, lesions=lesion_arr if aorta_lesions is None
                                else aorta_lesions, diameter_mm=aorta_diameter_mm, length_mm=aorta_length_mm,
                                fallback_reason=reason)
