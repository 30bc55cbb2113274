"""Per-lesion and per-study biomarkers of one image and lesion mask.

Definitions: docs/methods.md "Lesions and volumes" and "SULpeak". Lesions are the
3-D connected components of the mask (connectivity 6/18/26, default 26).
MTV = voxels x voxel volume (mL); TLG = MTV x SUVmean per lesion, summed per
study; PBI / PLI = lesion volume inside the bone / liver mask divided by that
mask's volume (None with a reason when the mask is missing, never 0).

Units. ``image`` is SUVbw for PET (any scalar image works, e.g. CT in HU, and
then every "suv*" value is in the image's unit). ``sulpeak`` is the global
peak of the SUL image ``image * sul_per_suvbw``; because the neighbourhood mean
is linear, it equals ``suvpeak * sul_per_suvbw`` and is computed that way.
``local_peak`` is the IBSI local peak of ``image`` as given (SUVbw).

Lesion ``organ`` is the majority of its voxels among bone / liver / other
(neither mask); ties go to bone, then liver. Without organ masks every lesion
is ``other``. This is the one implementation of the rule
(:func:`lesion_organs`); PERCIST's per-organ cap uses it too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from petcohort.engine import backend
from petcohort.engine.errors import InputError
from petcohort.engine.kernels._validate import (check_3d, check_connectivity, check_finite, check_positive,
                                                 check_same_grid, check_spacing)
from petcohort.engine.kernels.label import label_groups, lesion_labels, lesion_voxels
from petcohort.engine.kernels.sulpeak import DEFAULT_RADIUS_MM, kernel_size, lesion_peaks_unchecked

__all__ = ["Quantification", "quantify", "sulpeak", "STUDY_KEYS", "LESION_KEYS", "organ_voxel_counts",
           "majority_organ", "lesion_organs"]

STUDY_KEYS = ("lesion_count", "mtv_ml", "tlg", "suvmax", "suvmean", "sulpeak", "local_peak", "suvpeak",
              "pbi", "pli", "dmax_mm", "kernel_voxels", "kernel_ml")
LESION_KEYS = ("lesion", "voxels", "mtv_ml", "suvmax", "suvmean", "sulpeak", "suvpeak", "local_peak", "tlg",
               "centroid_mm", "organ")


@dataclass(frozen=True)
class Quantification:
    """Result of :func:`quantify`.

    Attributes
    ----------
    study : dict
        Keys :data:`STUDY_KEYS`, plus ``<key>_reason`` for every None value.
    lesions : list of dict
        One dict per lesion (keys :data:`LESION_KEYS`, plus ``sulpeak_reason``
        when SUL is unavailable), in label order.
    labels : (Z, Y, X) ndarray of int32
        The lesion labels the dicts refer to (``lesion`` = label id).
    """

    study: dict[str, Any]
    lesions: list[dict[str, Any]]
    labels: Any


def majority_organ(bone_n: int, liver_n: int, other_n: int) -> str:
    """``bone``, ``liver`` or ``other``: the majority of a lesion's voxel counts; ties in that order."""
    counts = (("bone", bone_n), ("liver", liver_n), ("other", other_n))
    return max(counts, key=lambda kv: kv[1])[0]  # max keeps the first of equal counts


def sulpeak(suv_peak: float | None, sul_per_suvbw: float | None) -> float | None:
    """A lesion's SULpeak from its SUVbw global peak: ``suv_peak * sul_per_suvbw``, float64.

    The sphere mean is linear, so this is the peak of the SUL image, without a
    SUL copy of the volume. The one formula of every SULpeak (``quantify``, and
    ``percist`` when it computes the peaks itself). None when either is None.
    """
    return None if suv_peak is None or sul_per_suvbw is None else suv_peak * sul_per_suvbw


def _host_mask(mask: Any) -> np.ndarray | None:
    """``mask != 0`` on the host; a boolean numpy mask as it is (no whole-volume copy)."""
    if mask is None:
        return None
    mask = backend.to_numpy(mask)
    return mask if mask.dtype == bool else mask != 0


def organ_voxel_counts(labels: Any, n: int, *, bone: Any = None, liver: Any = None,
                       voxels: tuple[np.ndarray, np.ndarray] | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxels of each label in the bone mask, in the liver mask and in neither.

    Parameters
    ----------
    labels : (Z, Y, X) integer ndarray (numpy or cupy), 0 = background, lesions 1..n
    n : int, the highest label
    bone, liver : (Z, Y, X) ndarray or None, same grid; non-zero = organ (None = no voxel in it)
    voxels : (indices, labels), optional  :func:`~petcohort.engine.kernels.label.lesion_voxels` of ``labels``

    Returns
    -------
    bone_n, liver_n, other_n : (n + 1,) ndarray of int64
        Indexed by label (index 0 = background). A voxel in both masks counts
        for both and not for ``other``.

    Raises
    ------
    GridError ``GRID_MISMATCH`` when a mask is not on the labels' grid.
    """
    labels = backend.to_numpy(labels)
    flat = labels.ravel()
    size = int(n) + 1
    # lesion voxels only (a few per cent of a whole body); the background entries from totals
    idx, values = lesion_voxels(labels) if voxels is None else voxels
    total = np.bincount(values, minlength=size)[:size]
    total[0] = flat.size - idx.size
    counts: dict[str, np.ndarray] = {}
    either = either_background = None
    for name, mask in (("bone", bone), ("liver", liver)):
        if mask is None:
            counts[name] = np.zeros(size, dtype=np.int64)
            continue
        m = _host_mask(mask)
        check_same_grid(labels, m, names=("labels", name))
        m = m.ravel()
        at = m[idx]
        counts[name] = np.bincount(values[at], minlength=size)[:size]
        counts[name][0] = int(np.count_nonzero(m)) - int(np.count_nonzero(at))
        either = at if either is None else (either | at)
        either_background = m if either_background is None else (either_background | m)
    if either is None:
        other = total
    else:
        other = total - np.bincount(values[either], minlength=size)[:size]
        other[0] = total[0] - (int(np.count_nonzero(either_background)) - int(np.count_nonzero(either)))
    return counts["bone"], counts["liver"], other


def lesion_organs(labels: Any, n: int, *, bone: Any = None, liver: Any = None) -> dict[int, str]:
    """Organ of each lesion 1..n by :func:`majority_organ` of its :func:`organ_voxel_counts`."""
    b, li, o = organ_voxel_counts(labels, n, bone=bone, liver=liver)
    return {lab: majority_organ(int(b[lab]), int(li[lab]), int(o[lab])) for lab in range(1, int(n) + 1)}


def _index(mask: Any, name: str, lesion_voxels_in: int, reason_missing: str) -> tuple[float | None, str | None]:
    if mask is None:
        return None, reason_missing
    total = int(np.count_nonzero(mask))
    if total == 0:
        return None, f"EMPTY_{name.upper()}_MASK"
    return lesion_voxels_in / total, None


def _dmax(centroids: np.ndarray) -> float:
    """Largest distance between two centroids (mm); 0 for a single lesion."""
    from scipy.spatial import ConvexHull, QhullError  # noqa: PLC0415
    from scipy.spatial.distance import cdist  # noqa: PLC0415

    if centroids.shape[0] < 2:
        return 0.0
    points = centroids
    if points.shape[0] > 64:
        # The farthest pair lies on the convex hull; this keeps threshold
        # masks with thousands of components away from an O(N^2) matrix.
        try:
            points = centroids[ConvexHull(centroids).vertices]
        except (QhullError, ValueError):  # coplanar/degenerate sets: all points
            points = centroids
    best = 0.0
    for start in range(0, points.shape[0], 1024):  # bounded memory
        best = max(best, float(cdist(points[start:start + 1024], points).max()))
    return best


def quantify(image: Any, mask: Any, *, spacing: Sequence[float], connectivity: int = 26,
             radius_mm: float = DEFAULT_RADIUS_MM, bone: Any = None, liver: Any = None,
             sul_per_suvbw: float | None = None, origin: Sequence[float] | None = None,
             instances: Any = None) -> Quantification:
    """Biomarkers of every lesion of ``mask`` on ``image``, and of the study.

    Parameters
    ----------
    image : (Z, Y, X) ndarray, float, finite
        SUVbw (or any scalar image; values are then in its unit).
    mask : (Z, Y, X) ndarray, same grid; non-zero = lesion
    spacing : (sz, sy, sx) mm
    connectivity : {6, 18, 26}
    radius_mm : float, mm
        SULpeak sphere radius.
    bone, liver : (Z, Y, X) ndarray or None
        Organ masks on the same grid (non-zero = organ).
    sul_per_suvbw : float or None
        SUL / SUVbw (= LBM / W). None: ``sulpeak`` is None, reason ``SUL_UNAVAILABLE``.
    origin : (oz, oy, ox) mm or None
        Position of voxel (0, 0, 0); centroids are ``origin + index * spacing``
        (``index * spacing`` when None).
    instances : (Z, Y, X) integer ndarray or None
        Instance ids (DICOM SEG segments, RTSTRUCT ROIs, label-map values)
        whose union is ``mask``: lesions are then the instances, each split
        into its connected parts (:func:`~petcohort.engine.kernels.label.lesion_labels`),
        and every lesion dict carries its ``segment`` (instance id).

    Returns
    -------
    Quantification

    Raises
    ------
    GridError ``GRID_MISMATCH``; InputError ``IMAGE_NOT_FINITE``, ``BAD_GEOMETRY``,
    ``BAD_CONNECTIVITY``, ``BAD_VALUE``, ``INSTANCES_MISMATCH``.
    """
    check_3d(image, "image")
    check_3d(mask, "mask")
    check_same_grid(image, mask, names=("image", "mask"))
    if instances is not None:
        check_3d(instances, "instances")
        check_same_grid(image, instances, names=("image", "instances"))
        xp = backend.get_namespace(mask, instances)
        if bool(xp.any((mask != 0) != (instances != 0))):
            raise InputError("INSTANCES_MISMATCH", "the instance map's foreground differs from the lesion mask")
    for name, organ in (("bone", bone), ("liver", liver)):
        if organ is not None:
            check_3d(organ, name)
            check_same_grid(image, organ, names=("image", name))
    sp = check_spacing(spacing)
    connectivity = check_connectivity(connectivity)
    radius_mm = check_positive(radius_mm, "radius_mm")
    if sul_per_suvbw is not None:
        sul_per_suvbw = check_positive(sul_per_suvbw, "sul_per_suvbw")
    org = np.zeros(3) if origin is None else np.asarray(origin, dtype=np.float64)
    if org.shape != (3,) or not np.isfinite(org).all():
        raise InputError("BAD_GEOMETRY", f"origin must be three finite numbers (mm, z/y/x), got {origin!r}")
    check_finite(image, "image")

    labels, n, parents = lesion_labels(mask, instances, connectivity=connectivity)
    image_h = backend.to_numpy(image)
    labels_h = backend.to_numpy(labels)
    # the lesion voxels, found once: every per-lesion reduction below runs on them (C order kept)
    voxels = lesion_voxels(labels_h)
    # Peaks run where the arrays live (GPU RawKernel for cupy input); the
    # per-lesion statistics below are cheap reductions over lesion voxels on the host.
    peaks = lesion_peaks_unchecked(image, labels, n, spacing=sp, radius_mm=radius_mm,
                                   voxels=None if backend.is_cupy(labels) else voxels)
    bone_h, liver_h = _host_mask(bone), _host_mask(liver)
    in_bone_n, in_liver_n, in_other_n = organ_voxel_counts(labels_h, n, bone=bone_h, liver=liver_h, voxels=voxels)
    kv, kml = kernel_size(sp, radius_mm)
    voxel_ml = math.prod(sp) / 1000.0
    order, bounds = label_groups(voxels[1], n)
    image_flat = image_h.reshape(-1)

    lesions: list[dict[str, Any]] = []
    centroids = []
    total_sum, total_n, in_bone, in_liver = 0.0, 0, 0, 0
    for lab in range(1, n + 1):
        at = voxels[0][order[bounds[lab - 1]:bounds[lab]]]   # the lesion's voxels, C order
        if at.size == 0:  # cannot happen with consecutive labels; kept for safety
            continue
        values = image_flat[at].astype(np.float64)
        voxels_n = int(values.size)
        vsum = float(values.sum())
        idx = np.stack(np.unravel_index(at, image_h.shape), axis=1)
        centroid = org + idx.mean(axis=0) * np.asarray(sp)
        nb, nl = int(in_bone_n[lab]), int(in_liver_n[lab])
        pk = peaks[lab - 1]
        mtv = voxels_n * voxel_ml
        suvmean = vsum / voxels_n
        lesion = {
            "lesion": lab, "voxels": voxels_n, "mtv_ml": mtv, "suvmax": float(values.max()),
            "suvmean": suvmean,
            "sulpeak": sulpeak(pk.global_peak, sul_per_suvbw),
            "suvpeak": pk.global_peak, "local_peak": pk.local_peak, "tlg": mtv * suvmean,
            "centroid_mm": [float(c) for c in centroid], "organ": majority_organ(nb, nl, int(in_other_n[lab])),
        }
        if sul_per_suvbw is None:
            lesion["sulpeak_reason"] = "SUL_UNAVAILABLE"
        if parents is not None:
            lesion["segment"] = int(parents[lab - 1])
        lesions.append(lesion)
        centroids.append(centroid)
        total_sum += vsum
        total_n += voxels_n
        in_bone += nb
        in_liver += nl

    study = _study(lesions, np.array(centroids).reshape(-1, 3), total_sum, total_n, voxel_ml, kv, kml,
                   sul_per_suvbw)
    for key, mask_h, voxels_in, missing in (("pbi", bone_h, in_bone, "NO_BONE_MASK"),
                                            ("pli", liver_h, in_liver, "NO_LIVER_MASK")):
        value, reason = _index(mask_h, "bone" if key == "pbi" else "liver", voxels_in, missing)
        study[key] = value
        if reason:
            study[f"{key}_reason"] = reason
    return Quantification(study=study, lesions=lesions, labels=labels)


def _study(lesions: list[dict[str, Any]], centroids: np.ndarray, total_sum: float, total_n: int,
           voxel_ml: float, kv: int, kml: float, sul_per_suvbw: float | None) -> dict[str, Any]:
    study: dict[str, Any] = {"lesion_count": len(lesions), "mtv_ml": total_n * voxel_ml,
                             "tlg": float(sum(les["tlg"] for les in lesions)),
                             "kernel_voxels": kv, "kernel_ml": kml}
    if not lesions:
        for key in ("suvmax", "suvmean", "suvpeak", "local_peak", "dmax_mm"):
            study[key] = None
            study[f"{key}_reason"] = "EMPTY_MASK"
        study["sulpeak"] = None
        study["sulpeak_reason"] = "SUL_UNAVAILABLE" if sul_per_suvbw is None else "EMPTY_MASK"
        return study
    study["suvmax"] = max(les["suvmax"] for les in lesions)
    study["suvmean"] = total_sum / total_n
    study["suvpeak"] = max(les["suvpeak"] for les in lesions)
    # IBSI local peak of the whole mask: at the hottest voxel of the study
    # (ties across lesions: the highest neighbourhood mean).
    study["local_peak"] = max(les["local_peak"] for les in lesions if les["suvmax"] == study["suvmax"])
    if sul_per_suvbw is None:
        study["sulpeak"] = None
        study["sulpeak_reason"] = "SUL_UNAVAILABLE"
    else:
        study["sulpeak"] = max(les["sulpeak"] for les in lesions)
    study["dmax_mm"] = _dmax(centroids)
    return study
