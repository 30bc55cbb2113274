"""Loading one ingested study: its arrays and attrs (pass 2 of ingest).

:func:`load_dicom` reads the chosen PET series as SUVbw (factors and
provenance from :func:`petcohort.storage.suv_header.suv_from_datasets`), the
chosen CT resampled onto the PET grid, and the study's DICOM SEG / RTSTRUCT
masks (:func:`study_masks`: ``seg/manual`` and ``organs/*``, never a silent
union of two experts). :func:`load_nifti` reads one autoPET folder. The
series and mask objects were chosen beforehand by
:mod:`petcohort.pipelines.ingest_discover`; definitions: docs/methods.md,
"DICOM masks and series selection".
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import numpy as np

from petcohort.engine.errors import PetCohortError, SuvError
from petcohort.engine.kernels import suv as suv_kernels
from petcohort.pipelines.ingest_types import IngestOptions, StudySources
from petcohort.storage.dicom_masks import PetGrid, lesion_segments, rasterise_mask
from petcohort.storage.dicom_read import read_series
from petcohort.storage.nifti import read_study_folder
from petcohort.storage.resample import resample_to_grid
from petcohort.storage.suv_header import suv_from_datasets

__all__ = ["load_dicom", "load_nifti", "study_masks"]

_ORGAN_ROLES = ("liver", "bone", "aorta")
_SUV_PROVENANCE = ("units", "suv_type", "vendor_scale", "decay_correction", "reference_rule",
                   "injection_time_source", "dose_unit_converted", "half_life_s", "lbm_formula", "lbm_kg",
                   "overrides", "corrected_image")


def _uptake(report: dict) -> tuple[float | None, str | None]:
    """Minutes from injection to the decay reference time (START) or to the scan start."""
    end = report.get("reference_time") or report.get("scan_time")
    if not report.get("injection_time"):
        return None, "SUV_MISSING_INJECTION_TIME"
    if end is None:
        return None, "SUV_MISSING_REFERENCE_TIME"
    delta = _dt.datetime.fromisoformat(end) - _dt.datetime.fromisoformat(report["injection_time"])
    return delta.total_seconds() / 60.0, None


def load_dicom(chosen: StudySources, opts: IngestOptions) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and attrs of one DICOM study from the series and mask objects chosen for it.

    Returns
    -------
    arrays : dict of str to ndarray
        ``pet`` ((Z, Y, X) float32, SUVbw), ``ct`` ((Z, Y, X) int16, HU on
        the PET grid; absent with ``ct_reason`` in attrs), ``seg/*`` and
        ``organs/*`` (uint8) from :func:`study_masks`.
    attrs : dict
        Geometry, body, SUV provenance, series selection and mask provenance.

    Raises
    ------
    SuvError
        When the PET headers give no SUVbw factor (the report's reason).
    """
    pet = chosen.pet.series
    report = suv_from_datasets(list(pet.headers), overrides=opts.overrides, lbm=opts.suv.lbm,
                               always_backcompute=opts.suv.always_backcompute)
    if report["reason"]:
        raise SuvError(report["reason"], report["message"])
    scale = report["suv_bw_factor"] if report["suv_bw_factor"] is not None else report["suv_bw_factors"]
    pet_vol = read_series(pet, scale=scale)
    arrays: dict[str, np.ndarray] = {"pet": pet_vol.array}
    first = pet.headers[0]
    uptake, uptake_reason = _uptake(report)
    factors = list((report["suv_bw_factors"] or {}).values())
    suv = {k: report[k] for k in _SUV_PROVENANCE}
    suv.update(bw_factor=report["suv_bw_factor"], lbm_factor=report["suv_lbm_factor"],
               per_instance=report["suv_bw_factor"] is None,
               bw_factor_range=[min(factors), max(factors)] if factors else None)
    attrs = {"site": str(first.get("InstitutionName", "") or "") or None,
             "scanner": " ".join(str(first.get(k, "") or "") for k in ("Manufacturer", "ManufacturerModelName")).strip()
             or None,
             "spacing": list(pet_vol.spacing), "origin": list(pet_vol.origin),
             "weight_kg": report["weight_kg"], "height_m": report["height_m"], "sex": report["sex"],
             "injected_dose_bq": report["dose_bq"], "uptake_min": uptake, "suv": suv,
             "sul_per_suvbw": report["sul_per_suvbw"], "sul_reason": report["suv_lbm_reason"], "source": "dicom",
             "series_selection": {"pet": chosen.pet.provenance(), "ct": chosen.ct.provenance()}}
    if uptake is None:
        attrs["uptake_min_reason"] = uptake_reason
    if chosen.ct.series is not None:
        ct_vol = read_series(chosen.ct.series)
        ct_on_pet = resample_to_grid(ct_vol.array, ct_vol.spacing, ct_vol.origin, pet_vol.array.shape,
                                     pet_vol.spacing, pet_vol.origin, interpolation="linear", default=-1000)
        del ct_vol
        arrays["ct"] = np.clip(np.rint(ct_on_pet), -32768, 32767).astype(np.int16)
        del ct_on_pet
    else:
        attrs["ct_reason"] = chosen.ct.reason
    mask_arrays, attrs["masks"] = study_masks(chosen, PetGrid.from_headers(pet_vol.headers), opts)
    arrays.update(mask_arrays)
    return arrays, attrs


def _selected(obj, opts: IngestOptions) -> list:
    """The segments of a mask object that would become lesions."""
    if opts.mask_kind is not None and obj.kind != opts.mask_kind:
        return []
    return lesion_segments(obj, opts.mask_label)


def _describe_mask(obj, how: str, opts: IngestOptions) -> dict[str, Any]:
    return {"kind": obj.kind, "matched_by": how, "segments": len(obj.segments),
            "lesion_labels": [seg.label for seg in _selected(obj, opts)],
            "organ_labels": [seg.label for seg in obj.segments if seg.role in _ORGAN_ROLES]}


def study_masks(chosen: StudySources, grid, opts: IngestOptions) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``seg/manual`` (+ ``_instances``) and ``organs/*`` from the study's mask objects, with provenance.

    Never a silent union of two experts: several objects with lesion
    segments and no ``--mask-label`` that singles one out leave the study
    without ``seg/manual`` (``MASK_AMBIGUOUS``, candidates listed). A mask
    object that cannot be rasterised is recorded with its reason; the study
    is ingested all the same.
    """
    findings: list[dict] = list(chosen.mask_findings)
    prov: dict[str, Any] = {"candidates": [_describe_mask(o, how, opts) for o, how in chosen.masks],
                            "mask_label": opts.mask_label.pattern if opts.mask_label is not None else None,
                            "mask_kind": opts.mask_kind}
    arrays: dict[str, np.ndarray] = {}
    lesion_objs = [(o, how) for o, how in chosen.masks if _selected(o, opts)]
    if len(lesion_objs) > 1:
        findings.append({"reason": "MASK_AMBIGUOUS", "message": f"{len(lesion_objs)} mask objects hold lesion "
                         "segments (" + "; ".join(f"{o.kind}: {', '.join(s.label for s in _selected(o, opts))}"
                                                  for o, _ in lesion_objs)
                         + "); none used. Choose with --mask-label REGEX (segment label / ROI name)"
                         + (" or --mask-kind SEG|RTSTRUCT" if len({o.kind for o, _ in lesion_objs}) > 1 else "")})
        lesion_objs = []
    elif not lesion_objs and chosen.masks:
        labels = sorted({seg.label for o, _ in chosen.masks for seg in o.segments})
        findings.append({"reason": "MASK_NO_LESION_SEGMENT", "message": "no segment/ROI of the study's mask "
                         f"objects was taken as a lesion (labels: {', '.join(labels)}); select with --mask-label"})
    organ_objs = [(o, how) for o, how in chosen.masks if any(seg.role in _ORGAN_ROLES for seg in o.segments)]
    done: set[int] = set()
    for obj, how in lesion_objs + organ_objs:
        if id(obj) in done:
            continue
        done.add(id(obj))
        as_lesions = any(obj is o for o, _ in lesion_objs)
        try:
            raster = rasterise_mask(obj, grid, label_regex=opts.mask_label.pattern if opts.mask_label else None,
                                    lesions=as_lesions)
        except PetCohortError as exc:
            findings.append({"reason": exc.reason, "message": f"{obj.kind}: {exc.message}"})
            continue
        findings.extend({"reason": r, "message": f"{obj.kind}: {m}"} for r, m in raster.warnings)
        if as_lesions:
            arrays["seg/manual"] = (raster.lesions != 0).astype(np.uint8)
            arrays["seg/manual_instances"] = raster.lesions
            prov["manual"] = {"kind": obj.kind, "matched_by": how,
                              "segments": [{"id": i, "number": seg.number, "label": seg.label}
                                           for i, seg in enumerate(raster.lesion_segments, start=1)]}
        for organ, mask in raster.organs.items():
            if f"organs/{organ}" not in arrays and mask.any():
                arrays[f"organs/{organ}"] = mask.astype(np.uint8)
                prov.setdefault("organs", {})[organ] = {"kind": obj.kind, "matched_by": how}
    prov["findings"] = findings
    return arrays, prov


def load_nifti(folder: Path, opts: IngestOptions) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and attrs of one autoPET folder (``SUV.nii.gz`` is SUVbw already; SUL from ``study.json``)."""
    ov = opts.overrides
    study = read_study_folder(folder)
    meta = study.meta
    weight = ov.weight_kg if ov.weight_kg is not None else meta.get("weight_kg")
    height = ov.height_m if ov.height_m is not None else meta.get("height_m")
    sex = ov.sex if ov.sex is not None else meta.get("sex")
    dose = ov.dose_bq if ov.dose_bq is not None else meta.get("injected_dose_bq")
    sul, sul_reason, lbm_kg = None, None, None
    try:
        if weight is None:
            raise SuvError("SUV_MISSING_WEIGHT", "study.json has no weight_kg")
        if height is None:
            raise SuvError("SUV_MISSING_HEIGHT", "study.json has no height_m")
        if sex not in ("M", "F"):
            raise SuvError("SUV_MISSING_SEX" if sex is None else "SUV_UNSUPPORTED_SEX",
                           f"SUL needs sex 'M' or 'F', got {sex!r}")
        sul, lbm_kg = suv_kernels.sul_per_suvbw(suv_kernels.Body(float(weight), float(height), sex),
                                                lbm=opts.suv.lbm)
    except SuvError as exc:
        sul_reason = exc.reason
    uptake = meta.get("uptake_min")
    overrides = {k: (v.isoformat() if isinstance(v, _dt.datetime) else v) for k, v in vars(ov).items() if v is not None}
    attrs = {"site": meta.get("site"), "scanner": meta.get("scanner"), "spacing": list(study.spacing),
             "origin": list(study.origin), "weight_kg": weight, "height_m": height, "sex": sex,
             "injected_dose_bq": dose, "uptake_min": uptake,
             "suv": {"bw_factor": 1.0, "lbm_factor": sul, "units": "SUVbw", "decay_correction": None,
                     "reference_rule": None, "overrides": overrides, "lbm_formula": opts.suv.lbm,
                     "lbm_kg": lbm_kg, "source_file": "SUV.nii.gz"},
             "sul_per_suvbw": sul, "sul_reason": sul_reason, "source": "nifti"}
    if uptake is None:
        attrs["uptake_min_reason"] = "UPTAKE_TIME_UNKNOWN"
    arrays = {"pet": study.pet, "ct": study.ct}
    if study.seg is not None:
        arrays["seg/manual"] = study.seg
    if study.seg_instances is not None:
        arrays["seg/manual_instances"] = study.seg_instances
        ids = np.unique(study.seg_instances)
        attrs["masks"] = {"manual": {"kind": "NIFTI", "segments": [{"id": int(i), "number": int(i), "label": None}
                                                                   for i in ids[ids != 0]]}}
    return arrays, attrs
