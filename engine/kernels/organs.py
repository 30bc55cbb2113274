"""Organ masks for PBI/PLI, the PERCIST reference and threshold exclusions.

Two sources (docs/methods.md "Lesions and volumes"):

* :func:`totalseg_to_organs` maps a TotalSegmentator v2 multilabel map (task
  ``total``, 117 classes) to the organs petcohort uses. Class ids follow
  ``class_map["total"]`` in ``totalsegmentator/map_to_binary.py`` of
  https://github.com/wasserth/TotalSegmentator (Wasserthal et al., Radiology:
  AI 2023). Reading a TotalSegmentator folder or NIfTI is IO and lives in
  ``pipelines/stage_organs.py``.
* :func:`bone_from_ct` is the documented CT fallback when no bone mask was
  supplied (see its docstring for the heuristic and its limits).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from petcohort.engine import backend
from petcohort.engine.errors import InputError
from petcohort.engine.kernels._validate import check_3d, check_finite, check_positive, check_spacing
from petcohort.engine.kernels.label import label

__all__ = ["TOTALSEG_V2_ORGANS", "totalseg_to_organs", "bone_from_ct", "ORGAN_NAMES"]

# TotalSegmentator v2 "total" class ids (map_to_binary.py, class_map["total"]).
# Costal cartilages (117) are cartilage, not bone, and are left out of "bone".
TOTALSEG_V2_ORGANS: dict[str, dict[int, str]] = {
    "bone": {
        25: "sacrum", 26: "vertebrae_S1",
        **{27 + i: f"vertebrae_L{5 - i}" for i in range(5)},      # 27 L5 .. 31 L1
        **{32 + i: f"vertebrae_T{12 - i}" for i in range(12)},    # 32 T12 .. 43 T1
        **{44 + i: f"vertebrae_C{7 - i}" for i in range(7)},      # 44 C7 .. 50 C1
        69: "humerus_left", 70: "humerus_right", 71: "scapula_left", 72: "scapula_right",
        73: "clavicula_left", 74: "clavicula_right", 75: "femur_left", 76: "femur_right",
        77: "hip_left", 78: "hip_right", 91: "skull",
        **{92 + i: f"rib_left_{i + 1}" for i in range(12)},       # 92 .. 103
        **{104 + i: f"rib_right_{i + 1}" for i in range(12)},     # 104 .. 115
        116: "sternum",
    },
    "liver": {5: "liver"},
    "aorta": {52: "aorta"},
    # physiological FDG uptake, excluded from threshold segmentations
    "brain": {90: "brain"},
    "bladder": {21: "urinary_bladder"},
    "kidneys": {2: "kidney_right", 3: "kidney_left"},
    "heart": {51: "heart"},
}
ORGAN_NAMES = tuple(TOTALSEG_V2_ORGANS)


def totalseg_to_organs(labels: Any) -> dict[str, Any]:
    """Organ masks from a TotalSegmentator v2 ``total`` multilabel map.

    Parameters
    ----------
    labels : (Z, Y, X) ndarray of int
        Class id per voxel (0 = background), on the PET grid.

    Returns
    -------
    dict of str -> (Z, Y, X) ndarray of uint8
        Keys :data:`ORGAN_NAMES` (``bone``, ``liver``, ``aorta``, ``brain``,
        ``bladder``, ``kidneys``, ``heart``); an organ absent from the map is
        an all-zero mask (the caller decides whether empty means missing).
    """
    check_3d(labels, "labels")
    xp = backend.get_namespace(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError("BAD_DTYPE", f"labels must hold integer class ids, got dtype {labels.dtype}")
    # One lookup table beats one comparison pass per class (26 bone classes).
    top = max(int(labels.max()) if labels.size else 0, 117)
    out: dict[str, Any] = {}
    for organ, classes in TOTALSEG_V2_ORGANS.items():
        lut = np.zeros(top + 1, dtype=np.uint8)
        lut[list(classes)] = 1
        safe = xp.clip(labels, 0, top)
        out[organ] = xp.asarray(lut)[safe]
    return out


def bone_from_ct(ct: Any, *, spacing: Sequence[float], hu_threshold: float = 150.0,
                 body_hu: float = -300.0, min_component_ml: float = 1.0) -> Any:
    """Skeleton mask from CT by a Hounsfield threshold (fallback when no bone mask exists).

    Heuristic: (1) the body is the largest 6-connected component of
    ``ct > body_hu`` (drops the scanner table, blankets and air); (2) bone is
    ``ct >= hu_threshold`` inside the body (cortical and dense trabecular bone
    sit well above 150 HU, soft tissue below ~100 HU); (3) 26-connected
    components under ``min_component_ml`` are dropped (noise, small
    calcifications).

    Limits: contrast-filled vessels and kidneys, vascular calcifications,
    metal implants and dense oral contrast are counted as bone; osteoporotic
    or lytic trabecular bone below the threshold (the marrow spaces of the
    spine and pelvis) is missed, so PBI from this mask is biased upwards;
    a table touching the body at PET resolution stays in the body mask; on a
    CT resampled to the PET grid partial-volume effects thin the ribs. Use a
    TotalSegmentator or manual bone mask when available.

    Parameters
    ----------
    ct : (Z, Y, X) ndarray, HU (int16 or float), on the PET grid
    spacing : (sz, sy, sx) mm
    hu_threshold : float, HU
    body_hu : float, HU
    min_component_ml : float, mL

    Returns
    -------
    (Z, Y, X) ndarray of uint8 (0/1)
    """
    check_3d(ct, "ct")
    check_finite(ct, "ct")
    sp = check_spacing(spacing)
    min_component_ml = check_positive(min_component_ml, "min_component_ml")
    ct = backend.to_numpy(ct)
    body_labels, n = label(ct > body_hu, connectivity=6)
    if n == 0:
        return np.zeros(ct.shape, dtype=np.uint8)
    sizes = np.bincount(body_labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    body = body_labels == int(np.argmax(sizes))
    bone_labels, nb = label((ct >= hu_threshold) & body, connectivity=26)
    if nb == 0:
        return np.zeros(ct.shape, dtype=np.uint8)
    min_voxels = min_component_ml * 1000.0 / math.prod(sp)
    sizes = np.bincount(bone_labels.ravel(), minlength=nb + 1)
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[bone_labels].astype(np.uint8)
