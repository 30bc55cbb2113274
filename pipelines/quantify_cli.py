"""``petcohort quantify``: biomarkers of one image and one mask, from files or a store.

Inputs are NIfTI files (read by :func:`petcohort.storage.nifti.read_nifti`:
reoriented to (Z, Y, X) LPS, spacing and origin from the affine) or store references
``STORE::STUDY_KEY`` (the study's ``pet``), ``STORE::STUDY_KEY::NAME`` (any
array, e.g. ``ct`` or ``seg/manual``). Any scalar image works (CT in HU too);
values are then in the image's unit. Centroids are LPS positions (mm) from
the NIfTI affine or the study's ``origin``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from petcohort.engine.errors import GridError, InputError
from petcohort.engine.kernels.lesions import LESION_KEYS, STUDY_KEYS, quantify
from petcohort.engine.kernels.sulpeak import DEFAULT_RADIUS_MM

__all__ = ["quantify_files", "render_text", "load_volume"]


def _load_nifti(path: str) -> tuple[np.ndarray, dict[str, Any]]:
    # The one NIfTI reader (storage.nifti.read_nifti): (Z, Y, X) LPS with the header's spacing and origin,
    # exactly as ingest reads an autoPET folder, so a file quantified here and ingested agree.
    from petcohort.storage.nifti import read_nifti  # noqa: PLC0415

    if not Path(path).is_file():  # only the file name: a full path may name the patient
        raise InputError("FILE_NOT_FOUND", f"image file {Path(path).name!r} does not exist")
    data, spacing, origin = read_nifti(path)
    return data, {"spacing": list(spacing), "origin": list(origin), "sul_per_suvbw": None}


def _load_store(spec: str, default_name: str) -> tuple[np.ndarray, dict[str, Any]]:
    from petcohort.storage.store import CohortStore  # noqa: PLC0415

    parts = spec.split("::")
    if len(parts) not in (2, 3) or not all(parts):
        raise InputError("BAD_STORE_REF", f"store reference must be STORE::STUDY_KEY or STORE::STUDY_KEY::NAME, "
                                          f"got {spec!r}")
    url, key = parts[0], parts[1]
    name = parts[2] if len(parts) == 3 else default_name
    store = CohortStore.open(url, mode="r")
    attrs = store.study_attrs(key)
    meta = {"spacing": [float(s) for s in attrs["spacing"]], "origin": attrs.get("origin"),
            "sul_per_suvbw": attrs.get("sul_per_suvbw"), "key": key, "array": name}
    return store.read_array(key, name), meta


def load_volume(spec: str, *, default_name: str = "pet") -> tuple[np.ndarray, dict[str, Any]]:
    """(Z, Y, X) array and geometry from a NIfTI path or a ``STORE::KEY[::NAME]`` reference."""
    if "::" in spec:
        return _load_store(spec, default_name)
    return _load_nifti(spec)


def quantify_files(pet: str, mask: str, *, radius_mm: float = DEFAULT_RADIUS_MM, connectivity: int = 26,
                   sul_per_suvbw: float | None = None) -> dict[str, Any]:
    """Quantify one image with one lesion mask.

    Parameters
    ----------
    pet : str
        NIfTI path or ``STORE::STUDY_KEY`` (the ``pet`` array) or
        ``STORE::STUDY_KEY::NAME``.
    mask : str
        NIfTI path or ``STORE::STUDY_KEY::seg/SOURCE``; non-zero = lesion.
    radius_mm : float, mm
        SULpeak sphere radius.
    connectivity : {6, 18, 26}
    sul_per_suvbw : float or None
        SUL / SUVbw; defaults to the study attr for store input, else None
        (``sulpeak`` is then None with ``SUL_UNAVAILABLE``).

    Returns
    -------
    dict
        ``{"study": {...}, "lesions": [...], "input": {shape, spacing, radius_mm,
        connectivity, sul_per_suvbw}}``, JSON-ready.

    Raises
    ------
    GridError ``GRID_MISMATCH`` (shape, spacing or origin differ); InputError
    (``FILE_NOT_FOUND``, ``NIFTI_UNREADABLE``, ``NIFTI_NOT_3D``, ``NIFTI_OBLIQUE``, ``IMAGE_NOT_FINITE``, ...).
    """
    image, im = load_volume(pet, default_name="pet")
    seg, mm = load_volume(mask, default_name="seg/manual")
    if image.shape != seg.shape:
        raise GridError("GRID_MISMATCH", f"mask has shape {seg.shape}, expected the image shape {image.shape}")
    if not np.allclose(im["spacing"], mm["spacing"], rtol=1e-4, atol=1e-4):
        raise GridError("GRID_MISMATCH", f"mask spacing {mm['spacing']} mm differs from image spacing "
                                         f"{im['spacing']} mm")
    if im["origin"] is not None and mm["origin"] is not None and \
            not np.allclose(im["origin"], mm["origin"], rtol=1e-4, atol=1e-3):
        raise GridError("GRID_MISMATCH", f"mask origin {mm['origin']} mm differs from image origin "
                                         f"{im['origin']} mm (not the same voxel grid)")
    factor = sul_per_suvbw if sul_per_suvbw is not None else im.get("sul_per_suvbw")
    if not np.issubdtype(image.dtype, np.floating):
        image = image.astype(np.float32)
    # a label map (several lesion ids) keeps its lesions, as ingest does (docs/methods.md "Lesions and volumes")
    from petcohort.storage.nifti import instance_map  # noqa: PLC0415

    try:
        instances = instance_map(seg)
    except InputError:  # non-integer values (e.g. a probability map): non-zero voxels, as before
        instances = None
    q = quantify(image, seg, spacing=im["spacing"], connectivity=connectivity, radius_mm=radius_mm,
                 sul_per_suvbw=factor, origin=im["origin"], instances=instances)
    return {"study": q.study, "lesions": q.lesions,
            "input": {"shape": list(image.shape), "spacing": im["spacing"], "radius_mm": float(radius_mm),
                      "connectivity": int(connectivity), "sul_per_suvbw": factor,
                      "mask": "label map: one lesion per label, split into connected parts" if instances is not None
                      else "binary: lesions are connected components",
                      "centroid_frame": "lps_origin" if im["origin"] is not None else "index_times_spacing"}}


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value == 0 or not math.isfinite(value):
            return f"{value:g}"
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.4e}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_fmt(v) for v in value) + ")"
    return str(value)


def render_text(result: dict[str, Any]) -> str:
    """Human-readable table: per-study values, then one row per lesion."""
    study = result["study"]
    lines = ["Study"]
    width = max(len(k) for k in STUDY_KEYS)
    for key in STUDY_KEYS:
        reason = study.get(f"{key}_reason")
        lines.append(f"  {key:<{width}}  {_fmt(study.get(key))}" + (f"  ({reason})" if reason else ""))
    lesions = result["lesions"]
    lines.append("")
    lines.append(f"Lesions ({len(lesions)})")
    if lesions:
        cols = [k for k in LESION_KEYS]
        cells = [[_fmt(les.get(k)) for k in cols] for les in lesions]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
        lines.append("  " + "  ".join(c.rjust(w) for c, w in zip(cols, widths)))
        for row in cells:
            lines.append("  " + "  ".join(v.rjust(w) for v, w in zip(row, widths)))
    inp = result.get("input", {})
    if inp:
        lines.append("")
        lines.append(f"kernel r = {_fmt(inp.get('radius_mm'))} mm, connectivity {inp.get('connectivity')}, "
                     f"spacing {_fmt(inp.get('spacing'))} mm")
    return "\n".join(lines)
