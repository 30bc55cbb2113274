"""Rasterise one visit: tissue classes, lesion ids, true SUV and CT on a grid.

Solids are painted in order (later wins), each only inside its bounding box
(:func:`.shapes.box_slices`). Lesions are painted last, clipped to their host
tissue (a bone metastasis stays inside bone, a liver one inside the liver),
so ``seg/manual`` and the organ indices (PBI/PLI) are consistent.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .lesions import Lesion, LesionState, LumpySolid
from .shapes import Grid, box_slices, coords
from .tissues import N_TISSUES, ORGAN_CLASSES, T

__all__ = ["TrueImages", "organ_masks", "paint_classes", "render_truth"]

_HOST_CLASSES = {
    "bone": np.isin(np.arange(N_TISSUES), ORGAN_CLASSES["bone"]),
    "liver": np.arange(N_TISSUES) == T.LIVER,
    "lung": np.arange(N_TISSUES) == T.LUNG,
    # nodes sit in fat and soft tissue, never in air, bone, brain or urine
    "node": np.isin(np.arange(N_TISSUES), (T.FAT, T.MUSCLE, T.VISCERA, T.LUNG, T.BREAST)),
}


@dataclass
class TrueImages:
    """Noise-free images of one visit on one grid.

    Attributes
    ----------
    classes : (Z, Y, X) uint8  tissue codes (:class:`.tissues.T`)
    lesion_ids : (Z, Y, X) uint16  lesion id per voxel, 0 = none
    suv : (Z, Y, X) float32  true SUVbw (before PSF and noise)
    hu : (Z, Y, X) float32  CT numbers before noise
    lesion_info : list of dict  per painted lesion: id, voxels, volume_ml, suv_true
    """

    classes: np.ndarray
    lesion_ids: np.ndarray
    suv: np.ndarray
    hu: np.ndarray
    lesion_info: list


def paint_classes(parts: list, grid: Grid, offset=(0.0, 0.0, 0.0), *,
                  boxes: dict | None = None) -> np.ndarray:
    """Tissue class map of ordered ``(code, solid)`` parts.

    Parameters
    ----------
    parts : list of (int, Shape)
    grid : Grid
    offset : (3,) mm  patient position in the scanner (added to every solid)
    boxes : dict, optional
        Filled with ``code -> (lo, hi)`` index corners enclosing every voxel
        painted with that code (lets :func:`organ_masks` skip the rest).

    Returns
    -------
    (Z, Y, X) uint8
    """
    classes = np.zeros(grid.shape, dtype=np.uint8)
    off = np.asarray(offset, float)
    # evaluating at (voxel - offset) is the same as moving every solid by +offset
    shifted = Grid(grid.shape, grid.spacing, tuple(np.subtract(grid.origin, off)))
    for code, solid in parts:
        lo, hi = solid.bbox()
        sl = box_slices(shifted, lo, hi)
        if sl is None:
            continue
        inside = solid.inside(*coords(shifted, sl))
        block = classes[sl]
        block[np.broadcast_to(inside, block.shape)] = code
        if boxes is not None:
            lo_i = np.array([s.start for s in sl])
            hi_i = np.array([s.stop for s in sl])
            if code in boxes:
                lo_i = np.minimum(lo_i, boxes[code][0])
                hi_i = np.maximum(hi_i, boxes[code][1])
            boxes[code] = (lo_i, hi_i)
    return classes


def render_truth(classes: np.ndarray, grid: Grid, lesions: list[tuple[Lesion, LesionState]],
                 suv_table: np.ndarray, hu_table: np.ndarray, *,
                 offset=(0.0, 0.0, 0.0)) -> TrueImages:
    """Paint lesions over a class map and look up the true SUV and HU.

    Parameters
    ----------
    classes : (Z, Y, X) uint8  from :func:`paint_classes`
    lesions : list of (Lesion, LesionState)  present lesions of this visit
    suv_table, hu_table : (N_TISSUES,) float32  per-class values at this visit
    offset : (3,) mm  the same patient position as for ``classes``

    Returns
    -------
    TrueImages
    """
    suv = suv_table[classes]
    hu = hu_table[classes]
    ids = np.zeros(grid.shape, dtype=np.uint16)
    info = []
    shifted = Grid(grid.shape, grid.spacing, tuple(np.subtract(grid.origin, offset)))
    for les, state in lesions:
        if not state.present:
            continue
        solid = LumpySolid(les, state.size)
        sl = box_slices(shifted, *solid.bbox())
        if sl is None:
            continue
        rho = solid.radius(*coords(shifted, sl))
        host = _HOST_CLASSES[les.organ][classes[sl]]
        mask = (rho <= 1.0) & host
        if not mask.any():
            continue
        # uptake falls off towards the rim; a necrotic core is cold
        val = state.suv * (1.0 - 0.3 * np.minimum(rho, 1.0) ** 2)
        if les.necrosis > 0:
            val = np.where(rho < les.necrosis, np.maximum(0.25 * state.suv, suv[sl]), val)
        bg = suv[sl]
        # a lesion never makes its voxels colder than the host (faint lesions near background)
        suv[sl] = np.where(mask, np.maximum(val, bg), bg).astype(np.float32)
        hu_blk = hu[sl]
        if les.ct == "hypodense":
            new_hu = hu_blk - les.ct_delta
        elif les.ct in ("lytic", "sclerotic", "soft"):
            new_hu = np.full_like(hu_blk, les.ct_delta)
        else:  # CT-occult marrow lesion
            new_hu = hu_blk
        hu[sl] = np.where(mask, new_hu, hu_blk)
        ids[sl][mask] = les.id
    counts = np.bincount(ids.ravel(), minlength=max([les.id for les, _ in lesions], default=0) + 1)
    for les, state in lesions:
        n = int(counts[les.id]) if state.present else 0
        if n:
            info.append({"id": int(les.id), "organ": les.organ, "site": les.site,
                         "centre_mm": [float(c) for c in np.add(les.centre, offset)],
                         "voxels": n, "volume_ml": n * grid.voxel_ml, "suv_true": float(state.suv),
                         "ct": les.ct, "necrotic": bool(les.necrosis > 0),
                         "first_visit": int(les.first_visit)})
    return TrueImages(classes, ids, suv, hu, info)


def organ_masks(classes: np.ndarray, boxes: dict | None = None) -> dict[str, np.ndarray]:
    """Ground-truth organ masks (uint8 0/1) keyed ``organs/<name>``.

    ``boxes`` (from :func:`paint_classes`) limits each lookup to the voxels
    its classes were painted in: painting later solids can only remove them.
    """
    out = {}
    for name, codes in ORGAN_CLASSES.items():
        lut = np.isin(np.arange(256), codes).astype(np.uint8)
        if boxes is None:
            out[f"organs/{name}"] = lut[classes]
            continue
        mask = np.zeros(classes.shape, dtype=np.uint8)
        found = [boxes[c] for c in codes if c in boxes]
        if found:
            lo = np.min([b[0] for b in found], axis=0)
            hi = np.max([b[1] for b in found], axis=0)
            sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
            mask[sl] = lut[classes[sl]]
        out[f"organs/{name}"] = mask
    return out
