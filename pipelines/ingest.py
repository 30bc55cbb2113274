"""Ingest DICOM PET/CT trees and autoPET NIfTI folders into a cohort store; SUV reports.

``ingest_tree`` works in two passes: headers only (which studies exist, whose,
when), then one study at a time (pixels, SUVbw, CT on the PET grid, write).
Timepoints are assigned per patient by scan date before any study is
written, so a study that fails does not renumber the others. A failing study
is recorded (returned ``failed`` entry, and a failed ``ingest`` stage record
in the store when its key can be formed) and the rest go on.

Privacy: patients and studies are known only by the store's keyed pseudonyms
(``P-<10 hex>`` patients, ``S-<10 hex>`` studies); PatientID, names, UIDs
and source paths never reach keys, attrs, logs or the returned report.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from petcohort.engine import __version__
from petcohort.engine.errors import DicomError, InputError, PetCohortError, StoreError, SuvError
from petcohort.engine.kernels import suv as suv_kernels
from petcohort.storage.dicom_read import SeriesInfo, read_series, scan_dicom_tree
from petcohort.storage.dicom_time import combine
from petcohort.storage.keys import study_key
from petcohort.storage.nifti import is_autopet_folder, read_sidecar, read_study_folder
from petcohort.storage.resample import resample_to_grid
from petcohort.storage.suv_header import SuvOverrides, suv_from_datasets

__all__ = ["ingest_tree", "suv_report"]

log = logging.getLogger(__name__)
INDEX = "ingest_index"   # cohort JSON: study pseudonym -> {key, patient, scan_date}
_SUV_PROVENANCE = ("units", "suv_type", "vendor_scale", "decay_correction", "reference_rule",
                   "injection_time_source", "dose_unit_converted", "half_life_s", "lbm_formula", "lbm_kg",
                   "overrides", "corrected_image")


def suv_report(dicom_dir: str | os.PathLike, *, overrides: dict | None = None, always_backcompute: bool = False,
               lbm: str = "janmahasatian") -> dict:
    """SUVbw/SUL factors and provenance of the one PET series under ``dicom_dir``.

    Never raises for header or series problems: ``reason`` holds the code
    (e.g. ``SUV_MISSING_WEIGHT``, ``DICOM_MIXED_SERIES``) and ``message`` the
    explanation. See :func:`petcohort.storage.suv_header.suv_from_datasets`
    for the fields.
    """
    try:
        series = [s for s in scan_dicom_tree(dicom_dir) if s.modality == "PT"]
        if not series:
            raise DicomError("DICOM_NO_SERIES", "no PET (Modality PT) image series found in the folder")
        if len(series) > 1:
            raise DicomError("DICOM_MIXED_SERIES", f"{len(series)} PET series found where one was expected; "
                             "give a folder holding one PET series")
    except PetCohortError as exc:
        report = suv_from_datasets([], overrides=overrides, always_backcompute=always_backcompute, lbm=lbm)
        report.update(reason=exc.reason, message=exc.message, suv_lbm_reason=exc.reason)
        return report
    return suv_from_datasets(list(series[0].headers), overrides=overrides,
                             always_backcompute=always_backcompute, lbm=lbm)


@dataclass
class _Candidate:
    """One study found in pass 1 (headers only)."""

    kind: str                          # "dicom" | "nifti"
    patient_raw: str | None            # raw identifier: only ever passed to store.pseudonym
    study_raw: str
    scan_time: _dt.datetime | None
    load: Callable[[], tuple[dict[str, np.ndarray], dict[str, Any]]]
    error: PetCohortError | None = None
    timepoint_hint: int | None = None
    key: str | None = None
    study: str | None = None           # study pseudonym
    days: int | None = None


def _open_store(store_url: str | os.PathLike):
    from petcohort.storage.store import CohortStore  # noqa: PLC0415 - storage is IO, imported when used

    try:
        return CohortStore.open(store_url, mode="r+")
    except StoreError as exc:
        if exc.reason != "NOT_A_STORE":
            raise
        return CohortStore.create(store_url, exist_ok=True)


def ingest_tree(src: str | os.PathLike, store_url: str | os.PathLike, *, overrides: dict | None = None) -> dict:
    """Ingest every DICOM PET/CT study and autoPET NIfTI folder under ``src``.

    Parameters
    ----------
    src : path
        A DICOM tree (any layout; series grouped by StudyInstanceUID and
        Modality) and/or autoPET folders (``SUV.nii.gz``, ``CTres.nii.gz``,
        ``SEG.nii.gz``, ``study.json``).
    store_url : path or URL
        Cohort store; created when missing.
    overrides : dict, optional
        SUV overrides (``weight_kg``, ``height_m``, ``sex``, ``dose_bq``,
        ``injection_datetime``), applied to every study and recorded.

    Returns
    -------
    dict
        ``ingested`` (study keys), ``skipped`` (keys already in the store),
        ``failed`` (``{source, key, reason, message}``; ``source`` is
        ``dicom/S-...`` or ``nifti/S-...``, a pseudonym, never a path).
    """
    src = Path(src)
    if not src.exists():
        # the path itself may name a patient: not echoed
        raise InputError("INGEST_NO_SOURCE", "the source folder given to ingest does not exist")
    ov = SuvOverrides.from_dict(overrides)  # a bad override is the caller's error: raise before touching the store
    store = _open_store(store_url)
    candidates = _discover(src, ov)
    result: dict[str, list] = {"ingested": [], "skipped": [], "failed": []}
    index: dict[str, dict] = dict(store.read_json(INDEX) or {})
    _assign(store, candidates, index)
    for cand in candidates:
        source = f"{cand.kind}/{cand.study}"
        if cand.error is None and cand.key is not None and index.get(cand.study, {}).get("status") == "ingested":
            result["skipped"].append(cand.key)
            continue
        started = time.time()
        try:
            if cand.error is not None:
                raise cand.error
            arrays, attrs = cand.load()
            attrs.update(patient=cand.key.rsplit("-T", 1)[0], study=cand.study,
                         timepoint=int(cand.key.rsplit("-T", 1)[1]), days_since_baseline=cand.days)
            _write(store, cand.key, arrays, attrs, started)
        except PetCohortError as exc:
            log.warning("ingest of %s failed: [%s]", cand.key or source, exc.reason)
            result["failed"].append({"source": source, "key": cand.key, "reason": exc.reason, "message": exc.message})
            if cand.key is not None:
                _record_failure(store, cand, exc, started)
            continue
        except Exception as exc:  # noqa: BLE001 - one bad study must not stop the others
            # the text of a foreign exception may hold a source path (patient names): record the type only
            err = InputError("INGEST_UNEXPECTED_ERROR", f"unexpected {type(exc).__name__} while ingesting")
            log.warning("ingest of %s failed: unexpected %s", cand.key or source, type(exc).__name__)
            result["failed"].append({"source": source, "key": cand.key, "reason": err.reason, "message": err.message})
            if cand.key is not None:
                _record_failure(store, cand, err, started)
            continue
        index[cand.study]["status"] = "ingested"
        store.write_json(INDEX, index)
        result["ingested"].append(cand.key)
        log.info("ingested %s", cand.key)
    store.write_json(INDEX, index)
    return result


def _ingest_record(started: float, **extra: Any) -> dict:
    return {"code_version": str(__version__), "started": _dt.datetime.fromtimestamp(started).isoformat(),
            "seconds": round(time.time() - started, 3), "worker": "ingest", **extra}


def _write(store, key: str, arrays: dict[str, np.ndarray], attrs: dict, started: float) -> None:
    if key in store.study_keys():  # a placeholder left by an earlier failed ingest of this study
        if store.study_attrs(key).get("study") != attrs["study"]:
            raise InputError("INGEST_KEY_CONFLICT", f"study key {key} already holds another study (the store's "
                             f"{INDEX} is out of date); ingest into a new store")
        store.update_study_attrs(key, {**attrs, "ingest_failed": False})
    else:
        store.add_study(key, attrs)
    store.write_arrays(key, arrays)
    if store.stage_record(key, "ingest") is not None:  # supersede the failed record
        store.commit_stage(key, "ingest", arrays={}, record=_ingest_record(
            started, summary={"arrays": sorted(arrays)}, message="ingested"))


def _record_failure(store, cand: _Candidate, exc: PetCohortError, started: float) -> None:
    try:
        if cand.key not in store.study_keys():
            # fail_stage needs the study: keep a placeholder so the manifest shows the failure
            store.add_study(cand.key, {"patient": cand.key.rsplit("-T", 1)[0], "study": cand.study,
                                       "timepoint": int(cand.key.rsplit("-T", 1)[1]),
                                       "days_since_baseline": cand.days, "source": cand.kind,
                                       "ingest_failed": True})
        store.fail_stage(cand.key, "ingest", record=_ingest_record(started, reason=exc.reason, message=exc.message))
    except PetCohortError as store_exc:
        log.warning("could not record the failed ingest of %s: [%s]", cand.key, store_exc.reason)


def _assign(store, candidates: list[_Candidate], index: dict[str, dict]) -> None:
    """Pseudonyms, timepoints (per patient, by scan date) and days since baseline.

    Studies already in the index keep their keys; new studies of a known
    patient must come after the patient's known studies (else
    ``INGEST_TIMEPOINT_CONFLICT``: renumbering stored studies is refused).
    """
    by_patient: dict[str, list[_Candidate]] = {}
    for cand in candidates:
        cand.study = store.pseudonym(f"{cand.kind}:{cand.study_raw}", prefix="S")
        if not cand.patient_raw:
            cand.error = cand.error or InputError(
                "INGEST_MISSING_PATIENT_ID",
                "the study has no patient identifier (DICOM PatientID / study.json patient_id); it cannot be keyed")
            continue
        by_patient.setdefault(store.pseudonym(cand.patient_raw), []).append(cand)
    for patient, cands in by_patient.items():
        known = {s: e for s, e in index.items() if e["patient"] == patient}
        new = [c for c in cands if c.study not in known]
        for c in cands:
            if c.study in known:
                c.key, c.days = known[c.study]["key"], known[c.study].get("days")
        if not new:
            continue
        if any(c.scan_time is None for c in new) and (len(new) + len(known) > 1):
            if all(c.timepoint_hint is not None for c in new) and not known:
                new.sort(key=lambda c: c.timepoint_hint)
            else:
                for c in new:
                    c.error = InputError("INGEST_MISSING_DATE", "a patient with several studies needs every "
                                         "scan date to order the timepoints; one is missing")
                continue
        else:
            new.sort(key=lambda c: (c.scan_time or _dt.datetime.min, c.study))
        known_dates = sorted(_dt.date.fromisoformat(e["scan_date"]) for e in known.values() if e.get("scan_date"))
        if known and new[0].scan_time is not None and known_dates and new[0].scan_time.date() < known_dates[-1]:
            for c in new:
                c.error = InputError("INGEST_TIMEPOINT_CONFLICT", "a new study predates this patient's stored "
                                     "studies; ingest all of a patient's studies into a new store together")
            continue
        base_date = (known_dates[0] if known_dates else
                     (new[0].scan_time.date() if new[0].scan_time is not None else None))
        first_tp = 1 + max((int(e["key"].rsplit("-T", 1)[1]) for e in known.values()), default=-1)
        for offset, c in enumerate(new):
            c.key = study_key(patient, first_tp + offset)
            c.days = (c.scan_time.date() - base_date).days if c.scan_time is not None and base_date else None
            if c.days is None and first_tp + offset == 0:
                c.days = 0
            index[c.study] = {"key": c.key, "patient": patient, "days": c.days, "status": "pending",
                              "scan_date": c.scan_time.date().isoformat() if c.scan_time is not None else None}


def _discover(src: Path, ov: SuvOverrides) -> list[_Candidate]:
    """Pass 1: autoPET folders and DICOM studies (headers only)."""
    candidates: list[_Candidate] = []
    nifti_dirs = sorted(p.parent for p in src.rglob("SUV.nii.gz") if is_autopet_folder(p.parent))
    for folder in nifti_dirs:
        candidates.append(_nifti_candidate(src, folder, ov))
    by_study: dict[str, list[SeriesInfo]] = {}
    for series in scan_dicom_tree(src):
        by_study.setdefault(series.study_uid, []).append(series)
    for study_uid, series in sorted(by_study.items()):
        candidates.append(_dicom_candidate(study_uid, series, ov))
    return candidates


def _scan_time(series: SeriesInfo) -> _dt.datetime | None:
    times = [combine(ds.get("AcquisitionDate") or ds.get("SeriesDate"), ds.get("AcquisitionTime"))
             for ds in series.headers]
    times = [t for t in times if t is not None]
    if times:
        return min(times)
    ds = series.headers[0]
    return combine(ds.get("SeriesDate"), ds.get("SeriesTime")) or combine(ds.get("StudyDate"), ds.get("StudyTime"))


def _dicom_candidate(study_uid: str, series: list[SeriesInfo], ov: SuvOverrides) -> _Candidate:
    pets = [s for s in series if s.modality == "PT"]
    cts = [s for s in series if s.modality == "CT"]
    error: PetCohortError | None = None
    if len(pets) != 1:
        error = DicomError("DICOM_MIXED_SERIES" if pets else "INGEST_MISSING_PET",
                           f"a study needs exactly one PET series, found {len(pets)}")
    elif not cts:
        error = DicomError("INGEST_MISSING_CT", "the study has a PET series but no CT series")
    elif len(cts) > 1:
        frame = str(pets[0].headers[0].get("FrameOfReferenceUID", ""))
        same = [c for c in cts if str(c.headers[0].get("FrameOfReferenceUID", "")) == frame]
        if len(same) == 1:
            cts = same
        else:
            error = DicomError("DICOM_MIXED_SERIES", f"{len(cts)} CT series and {len(same)} share the PET "
                               "frame of reference; cannot choose the attenuation CT")
    anchor = pets[0] if pets else series[0]
    return _Candidate(kind="dicom", patient_raw=anchor.patient_id or None, study_raw=study_uid,
                      scan_time=_scan_time(anchor), error=error,
                      load=lambda: _load_dicom(pets[0], cts[0], ov))


def _uptake(report: dict) -> tuple[float | None, str | None]:
    """Minutes from injection to the decay reference time (START) or to the scan start."""
    end = report.get("reference_time") or report.get("scan_time")
    if not report.get("injection_time"):
        return None, "SUV_MISSING_INJECTION_TIME"
    if end is None:
        return None, "SUV_MISSING_REFERENCE_TIME"
    delta = _dt.datetime.fromisoformat(end) - _dt.datetime.fromisoformat(report["injection_time"])
    return delta.total_seconds() / 60.0, None


def _load_dicom(pet: SeriesInfo, ct: SeriesInfo, ov: SuvOverrides) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    report = suv_from_datasets(list(pet.headers), overrides=ov)
    if report["reason"]:
        raise SuvError(report["reason"], report["message"])
    scale = report["suv_bw_factor"] if report["suv_bw_factor"] is not None else report["suv_bw_factors"]
    pet_vol = read_series(pet, scale=scale)
    ct_vol = read_series(ct)
    ct_on_pet = resample_to_grid(ct_vol.array, ct_vol.spacing, ct_vol.origin, pet_vol.array.shape,
                                 pet_vol.spacing, pet_vol.origin, interpolation="linear", default=-1000)
    ct_hu = np.clip(np.rint(ct_on_pet), -32768, 32767).astype(np.int16)
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
             "sul_per_suvbw": report["sul_per_suvbw"], "sul_reason": report["suv_lbm_reason"], "source": "dicom"}
    if uptake is None:
        attrs["uptake_min_reason"] = uptake_reason
    return {"pet": pet_vol.array, "ct": ct_hu}, attrs


def _nifti_candidate(src: Path, folder: Path, ov: SuvOverrides) -> _Candidate:
    rel = folder.relative_to(src).as_posix()
    try:
        meta = read_sidecar(folder)
    except PetCohortError as exc:
        return _Candidate(kind="nifti", patient_raw=None, study_raw=rel, scan_time=None, load=lambda: ({}, {}),
                          error=exc)
    scan = None
    for name in ("scan_datetime", "study_date"):
        if scan is None and meta.get(name):
            try:
                scan = _dt.datetime.fromisoformat(str(meta[name]))
            except ValueError:
                return _Candidate(kind="nifti", patient_raw=None, study_raw=rel, scan_time=None,
                                  load=lambda: ({}, {}), error=InputError(
                                      "NIFTI_BAD_SIDECAR", f"study.json {name} is not an ISO date(-time)"))
    tp = meta.get("timepoint")
    return _Candidate(kind="nifti", patient_raw=str(meta.get("patient_id") or "") or None,
                      study_raw=str(meta.get("study_uid") or rel), scan_time=scan,
                      timepoint_hint=int(tp) if isinstance(tp, int) else None,
                      load=lambda: _load_nifti(folder, ov))


def _load_nifti(folder: Path, ov: SuvOverrides) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
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
            raise SuvError("SUV_MISSING_SEX" if sex is None else "SUL_UNSUPPORTED_SEX",
                           f"SUL needs sex 'M' or 'F', got {sex!r}")
        sul, lbm_kg = suv_kernels.sul_per_suvbw(suv_kernels.Body(float(weight), float(height), sex))
    except SuvError as exc:
        sul_reason = exc.reason
    uptake = meta.get("uptake_min")
    overrides = {k: (v.isoformat() if isinstance(v, _dt.datetime) else v) for k, v in vars(ov).items() if v is not None}
    attrs = {"site": meta.get("site"), "scanner": meta.get("scanner"), "spacing": list(study.spacing),
             "origin": list(study.origin), "weight_kg": weight, "height_m": height, "sex": sex,
             "injected_dose_bq": dose, "uptake_min": uptake,
             "suv": {"bw_factor": 1.0, "lbm_factor": sul, "units": "SUVbw", "decay_correction": None,
                     "reference_rule": None, "overrides": overrides, "lbm_formula": "janmahasatian",
                     "lbm_kg": lbm_kg, "source_file": "SUV.nii.gz"},
             "sul_per_suvbw": sul, "sul_reason": sul_reason, "source": "nifti"}
    if uptake is None:
        attrs["uptake_min_reason"] = "UPTAKE_UNKNOWN"
    arrays = {"pet": study.pet, "ct": study.ct}
    if study.seg is not None:
        arrays["seg/manual"] = study.seg
    return arrays, attrs
