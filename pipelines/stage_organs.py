"""Stage ``organs``: bone, liver, aorta (and physiological-uptake) masks on the PET grid.

Sources, in order of preference, recorded per mask in the summary
(``summary["sources"][organ]``):

1. ``store`` - ``organs/<organ>`` supplied at ingest/synth (manual or
   TotalSegmentator masks already on the PET grid);
2. ``totalseg`` - derived from a TotalSegmentator v2 multilabel map stored as
   ``organs/totalseg`` (see :func:`read_totalseg` for reading one from disk);
3. ``ct_hu`` - bone only: the CT Hounsfield fallback
   (:func:`petcohort.engine.kernels.organs.bone_from_ct`).

A missing liver is not a failure: the summary carries ``liver_reason``
(``NO_LIVER_MASK``); PLI and the PERCIST liver reference then report their
own reasons downstream. Masks this stage derived in an earlier run are derived
again (not mistaken for supplied ones): the previous record lists them.

Device: on a GPU worker (:func:`petcohort.engine.backend.stage_device`) the
TotalSegmentator map is moved to the device once, split into organ masks
there and the masks come back as numpy (summary ``device: "cuda"``); after a
device out-of-memory the study-stage is redone on the CPU (``device: "cpu"``,
``device_fallback: "GPU_OUT_OF_MEMORY"``). The CT-HU bone fallback runs on the
host (its kernel labels on the host). CPU workers: numpy, no ``device`` key.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from petcohort.engine import backend
from petcohort.engine.errors import InputError
from petcohort.engine.kernels.organs import ORGAN_NAMES, TOTALSEG_V2_ORGANS, bone_from_ct, totalseg_to_organs
from petcohort.pipelines.stages import StageContext, StageOutput, register_stage

__all__ = ["organs_stage", "read_totalseg"]

log = logging.getLogger(__name__)


def read_totalseg(path: str | Path) -> np.ndarray:
    """Read TotalSegmentator output as a (Z, Y, X) multilabel map of v2 class ids.

    Parameters
    ----------
    path : str or Path
        Either a multilabel NIfTI (``--ml`` output) or an output folder of
        per-class files ``<class>.nii.gz``; in a folder only the classes
        petcohort uses (:data:`TOTALSEG_V2_ORGANS`) are read.

    Returns
    -------
    (Z, Y, X) ndarray of uint8
        Read by :func:`petcohort.storage.nifti.read_nifti` (reoriented to
        LPS), the reader of every NIfTI in petcohort (ingest, ``quantify``),
        so the map lies on the PET grid read from the same frame.

    Raises
    ------
    InputError ``TOTALSEG_NOT_FOUND``, ``TOTALSEG_EMPTY``, ``GRID_MISMATCH``, and the
    ``NIFTI_*`` reasons of :func:`~petcohort.storage.nifti.read_nifti`.
    """
    from petcohort.storage.nifti import read_nifti  # noqa: PLC0415

    p = Path(path)
    if p.is_file():
        return np.ascontiguousarray(np.rint(read_nifti(p)[0]).astype(np.uint8))
    if not p.is_dir():
        raise InputError("TOTALSEG_NOT_FOUND", f"TotalSegmentator path {str(p)!r} is neither a file nor a folder")
    labels: np.ndarray | None = None
    for classes in TOTALSEG_V2_ORGANS.values():
        for cid, name in classes.items():
            f = p / f"{name}.nii.gz"
            if not f.exists():
                continue
            part = read_nifti(f)[0] != 0
            if labels is None:
                labels = np.zeros(part.shape, dtype=np.uint8)
            if part.shape != labels.shape:
                raise InputError("GRID_MISMATCH", f"{f.name} has shape {part.shape}, expected {labels.shape}")
            labels[part] = cid
    if labels is None:
        raise InputError("TOTALSEG_EMPTY", f"folder {str(p)!r} holds none of the TotalSegmentator class files "
                                           "petcohort maps (e.g. liver.nii.gz)")
    return np.ascontiguousarray(labels)


def _derived_before(ctx: StageContext) -> set[str]:
    rec = ctx.store.stage_record(ctx.key, "organs")
    if rec and rec.get("status") == "committed":
        return set(rec.get("arrays") or [])
    return set()


def _split_totalseg(labels: np.ndarray, device: str) -> dict[str, np.ndarray]:
    """Organ masks of a TotalSegmentator map, computed on ``device`` (moved once), returned as numpy."""
    masks = totalseg_to_organs(labels if device == "cpu" else backend.to_device(labels, device))
    return {organ: backend.to_numpy(m) for organ, m in masks.items()}


@register_stage("organs", params=())
def organs_stage(ctx: StageContext) -> StageOutput:
    """Collect or derive the organ masks of one study (see module docstring)."""
    derived = _derived_before(ctx)
    present = set(ctx.store.array_names(ctx.key)) - derived
    sources: dict[str, str | None] = {}
    arrays: dict[str, Any] = {}
    from_totalseg: dict[str, Any] | None = None
    device: dict[str, str] = {}
    if "organs/totalseg" in present:
        totalseg = ctx.store.read_array(ctx.key, "organs/totalseg")
        from_totalseg, device = backend.run_on_device(lambda dev: _split_totalseg(totalseg, dev))
    for organ in ORGAN_NAMES:
        name = f"organs/{organ}"
        if name in present:
            sources[organ] = "store"
        elif from_totalseg is not None and from_totalseg[organ].any():
            arrays[name] = from_totalseg[organ]
            sources[organ] = "totalseg"
        else:
            sources[organ] = None
    if sources["bone"] is None and ctx.store.has_array(ctx.key, "ct"):
        arrays["organs/bone"] = bone_from_ct(ctx.store.read_array(ctx.key, "ct"), spacing=ctx.spacing)
        sources["bone"] = "ct_hu"
    summary: dict[str, Any] = {"sources": sources, **device}
    for organ in ("bone", "liver", "aorta"):
        if sources[organ] is None:
            summary[f"{organ}_reason"] = f"NO_{organ.upper()}_MASK"
    if sources["bone"] is None and not ctx.store.has_array(ctx.key, "ct"):
        # PET-only study: the CT-HU bone fallback cannot run; PBI is then missing with this reason
        summary["bone_reason"] = "NO_CT_FOR_BONE_FALLBACK"
    voxel_ml = float(np.prod(ctx.spacing)) / 1000.0
    summary["volumes_ml"] = {}
    for organ in ("bone", "liver", "aorta"):
        name = f"organs/{organ}"
        if name in arrays:
            summary["volumes_ml"][organ] = int(np.count_nonzero(arrays[name])) * voxel_ml
        elif sources[organ] == "store":
            summary["volumes_ml"][organ] = int(np.count_nonzero(ctx.store.read_array(ctx.key, name))) * voxel_ml
    log.debug("organs %s: sources %s", ctx.key, sources)
    return StageOutput(arrays=arrays, summary=summary)
