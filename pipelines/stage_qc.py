"""Stage ``qc``: coronal maximum intensity projections for the report and dashboard.

The report (paper Fig. 3 and 6a) and the live dashboard draw PET MIPs with
lesion contours. Reading whole volumes for hundreds of studies in a browser
process would be slow, so this stage stores small 2D uint8 projections once
per study: ``qc/mip_pet`` and ``qc/mip_<source>`` for every ``seg/<source>``
mask (``seg/manual`` -> ``qc/mip_manual``).

Orientation: arrays are ``(Z, Y, X)`` with ``Z`` growing towards the head
(docs/contracts.md), so the coronal MIP is ``max over Y`` with ``Z`` flipped,
giving an image with the head at row 0 ("head up" when drawn with
``origin="upper"``).
"""
from __future__ import annotations

import numpy as np

from petcohort.engine.errors import InputError
from petcohort.pipelines.lesion_labels import is_instances_array
from petcohort.pipelines.stages import StageContext, StageOutput, register_stage

__all__ = ["SUV_WINDOW", "coronal_mip", "pet_mip_uint8", "mask_mip_uint8", "qc_stage"]

#: SUVbw window mapped onto 0-255 in ``qc/mip_pet`` (a usual display window for
#: whole-body FDG: the liver sits near 2, most metastases below 10).
SUV_WINDOW: tuple[float, float] = (0.0, 10.0)


def coronal_mip(volume: np.ndarray) -> np.ndarray:
    """Coronal maximum intensity projection, head up.

    Parameters
    ----------
    volume : (Z, Y, X) ndarray
        Any dtype; ``Z`` grows towards the head.

    Returns
    -------
    (Z, X) ndarray, same dtype, row 0 = most cranial slice.

    Raises
    ------
    InputError
        ``NOT_3D`` when ``volume`` is not 3D or is empty.
    """
    arr = np.asarray(volume)
    if arr.ndim != 3 or 0 in arr.shape:
        raise InputError("NOT_3D", f"volume must be a non-empty (Z, Y, X) array, got shape {arr.shape}")
    return arr.max(axis=1)[::-1]


def pet_mip_uint8(pet: np.ndarray, *, window: tuple[float, float] = SUV_WINDOW) -> np.ndarray:
    """PET coronal MIP with the SUV ``window`` mapped linearly onto 0-255.

    Parameters
    ----------
    pet : (Z, Y, X) ndarray of float, SUVbw
    window : (low, high) SUVbw; values outside are clipped.

    Returns
    -------
    (Z, X) ndarray of uint8

    Raises
    ------
    InputError
        ``BAD_VALUE`` when ``high <= low``; ``NOT_3D`` (see :func:`coronal_mip`).
    """
    low, high = float(window[0]), float(window[1])
    if not high > low:
        raise InputError("BAD_VALUE", f"window must be (low, high) with high > low, got {window!r}")
    mip = coronal_mip(pet).astype(np.float64)
    # NaN would silently become 0 in the cast; a PET with NaN is a broken input.
    if not np.isfinite(mip).all():
        raise InputError("IMAGE_NOT_FINITE", "pet holds NaN or infinite SUV values; expected finite SUVbw")
    scaled = (np.clip(mip, low, high) - low) / (high - low) * 255.0
    return np.rint(scaled).astype(np.uint8)


def mask_mip_uint8(mask: np.ndarray) -> np.ndarray:
    """Coronal projection of a 0/1 mask (any voxel along Y set -> 1), head up.

    Parameters
    ----------
    mask : (Z, Y, X) ndarray of uint8 or bool

    Returns
    -------
    (Z, X) ndarray of uint8 in {0, 1}
    """
    return (coronal_mip(np.asarray(mask) > 0)).astype(np.uint8)


@register_stage("qc", requires=("threshold",), applies_to="all", params=("analysis.sources",))
def qc_stage(ctx: StageContext) -> StageOutput:
    """Write ``qc/mip_pet`` and one ``qc/mip_<source>`` per ``seg/<source>`` mask.

    Summary: ``mip_shape`` [Z, X], ``mip_spacing_mm`` [sz, sx], ``window_suv``,
    ``sources`` (mask sources projected), ``pet_max_suv``.
    """
    pet = ctx.store.read_array(ctx.key, "pet")
    if pet.ndim != 3:
        raise InputError("NOT_3D", f"pet of study {ctx.key} must be (Z, Y, X), got shape {pet.shape}")
    arrays: dict[str, np.ndarray] = {"qc/mip_pet": pet_mip_uint8(pet)}
    sources = []
    for name in ctx.store.array_names(ctx.key):
        if not name.startswith("seg/") or is_instances_array(name):
            continue
        source = name.split("/", 1)[1]
        if ctx.config.sources is not None and source != "manual" and source not in ctx.config.sources:
            continue
        mask = ctx.store.read_array(ctx.key, name)
        if mask.shape != pet.shape:
            raise InputError("GRID_MISMATCH", f"{name} of study {ctx.key} has shape {mask.shape}, "
                                                 f"expected the PET shape {pet.shape}")
        arrays[f"qc/mip_{source}"] = mask_mip_uint8(mask)
        sources.append(source)
    sz, _, sx = ctx.spacing
    summary = {
        "mip_shape": list(arrays["qc/mip_pet"].shape),
        "mip_spacing_mm": [float(sz), float(sx)],
        "window_suv": list(SUV_WINDOW),
        "orientation": "coronal, head up (row 0 = cranial)",
        "sources": sources,
        "pet_max_suv": float(np.nanmax(pet)),
    }
    return StageOutput(arrays=arrays, summary=summary)
