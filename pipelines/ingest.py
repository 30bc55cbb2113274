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
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from petcohort.engine import __version__
from petcohort.engine.errors import ConfigError, DicomError, InputError, PetCohortError, StoreError, SuvError
from petcohort.engine.kernels import suv as suv_kernels
from petcohort.pipelines.config import SuvConfig
from petcohort.storage.dicom_masks import PetGrid, lesion_segments, match_mask, rasterise_mask, read_mask_header
from petcohort.storage.dicom_read import SeriesInfo, read_series, scan_dicom_archive, scan_dicom_tree, slice_geometry
from petcohort.storage.dicom_select import SeriesChoice, compile_pattern, select_ct, select_pet
from petcohort.storage.dicom_time import combine
from petcohort.storage.keys import study_key
from petcohort.storage.nifti import is_autopet_folder, read_sidecar, read_study_folder
from petcohort.storage.resample import resample_to_grid
from petcohort.storage.suv_header import SuvOverrides, suv_from_datasets

__all__ = ["ingest_tree", "suv_report", "locate_sources", "SourceStudy", "IngestOptions"]

log = logging.getLogger(__name__)
_ORGAN_ROLES = ("liver", "bone", "aorta")
INDEX = "ingest_index"   # cohort JSON: study pseudonym -> {key, patient, scan_date}
_SUV_PROVENANCE = ("units", "suv_type", "vendor_scale", "decay_correction", "reference_rule",
                   "injection_time_source", "dose_unit_converted", "half_life_s", "lbm_formula", "lbm_kg",
                   "overrides", "corrected_image")


def suv_report(dicom_dir: str | os.PathLike, *, overrides: dict | None = None, always_backcompute: bool = False,
               lbm: str = "janmahasatian", pet_series: str | None = None) -> dict:
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
        if len({s.study_uid for s in series}) > 1:
            raise DicomError("DICOM_MIXED_SERIES", f"PET series of {len({s.study_uid for s in series})} studies "
                             "found where one study was expected; give a folder holding one study")
        if len(series) > 1:  # AC + NAC of one acquisition: the same choice as ingest (or its named reason)
            series = [select_pet(series, pet_series=compile_pattern(pet_series, "--pet-series")).series]
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
    mask_ids: tuple[int, ...] = ()     # indices of the archive's mask objects matched to this study
    pet_series_uid: str | None = None  # raw UID: only ever passed to store.pseudonym
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


def ingest_tree(src: str | os.PathLike, store_url: str | os.PathLike, *, overrides: dict | None = None,
                pet_series: str | None = None, ct_series: str | None = None, mask_label: str | None = None,
                mask_kind: str | None = None, suv: SuvConfig | None = None) -> dict:
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
    pet_series, ct_series : str, optional
        Regular expressions (case-insensitive, searched in SeriesDescription)
        choosing among several attenuation-corrected PET / same-frame CT
        series (see :mod:`petcohort.storage.dicom_select`).
    mask_label : str, optional
        Regular expression choosing the lesion segments/ROIs of DICOM SEG and
        RTSTRUCT objects by SegmentLabel / ROIName (default: segments coded or
        named as lesions).
    mask_kind : {"SEG", "RTSTRUCT"}, optional
        Take lesions only from mask objects of this kind (an archive that
        holds the same annotation as both a SEG and an RTSTRUCT).
    suv : SuvConfig, optional
        The run configuration's ``suv`` section: ``lbm`` (SUL's lean body
        mass formula) and ``always_backcompute`` (reference-time rule);
        default: the configuration defaults. Recorded in each study's
        ``suv`` attrs.

    Returns
    -------
    dict
        ``ingested`` (study keys), ``skipped`` (keys already in the store),
        ``failed`` (``{source, key, reason, message}``; ``source`` is
        ``dicom/S-...`` or ``nifti/S-...``, a pseudonym, never a path),
        ``warnings`` (``{key, reason, message}``: a study ingested without
        a mask object it had, e.g. ``MASK_AMBIGUOUS``; key None for findings
        that belong to no study, e.g. ``DICOM_UNREADABLE_FILE``).
    """
    src = Path(src)
    if not src.exists():
        # the path itself may name a patient: not echoed
        raise InputError("FILE_NOT_FOUND", "the source folder given to ingest does not exist")
    # bad options are the caller's error: raise before touching the store
    opts = IngestOptions.build(overrides, pet_series, ct_series, mask_label, mask_kind, suv)
    store = _open_store(store_url)
    candidates, findings = _discover(src, opts)
    result: dict[str, list] = {"ingested": [], "skipped": [], "failed": [],
                               "warnings": [{"key": None, **f} for f in findings]}
    index: dict[str, dict] = dict(store.read_json(INDEX) or {})
    _assign(store, candidates, index)
    for cand in candidates:
        source = f"{cand.kind}/{cand.study}"
        # an ingested study is never touched again, even when this run's options would now refuse it
        # (e.g. a --pet-series meant for another study): the store keeps what it has
        if cand.key is not None and index.get(cand.study, {}).get("status") == "ingested":
            result["skipped"].append(cand.key)
            continue
        started = time.time()
        try:
            if cand.error is not None:
                raise cand.error
            arrays, attrs = cand.load()
            if cand.kind == "dicom":
                attrs["pet_series_pseudonym"] = store.pseudonym(f"series:{cand.pet_series_uid}", prefix="R")
            attrs.update(patient=cand.key.rsplit("-T", 1)[0], study=cand.study,
                         timepoint=int(cand.key.rsplit("-T", 1)[1]), days_since_baseline=cand.days)
            _write(store, cand.key, arrays, attrs, started)
            result["warnings"].extend({"key": cand.key, **f} for f in (attrs.get("masks") or {}).get("findings", []))
        except PetCohortError as exc:
            log.warning("ingest of %s failed: [%s]", cand.key or source, exc.reason)
            result["failed"].append({"source": source, "key": cand.key, "reason": exc.reason, "message": exc.message})
            if cand.key is not None:
                _record_failure(store, cand, exc, started)
            continue
        except Exception as exc:  # noqa: BLE001 - one bad study must not stop the others
            # the text of a foreign exception may hold a source path (patient names): record the type only
            err = InputError("INTERNAL_ERROR", f"unexpected {type(exc).__name__} while ingesting")
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
    # The ingest record (always; it supersedes a failed one) carries what was chosen and, as its reason, the first
    # finding (e.g. MASK_AMBIGUOUS) so that the manifest shows it; the study itself is ingested.
    findings = (attrs.get("masks") or {}).get("findings", [])
    store.commit_stage(key, "ingest", arrays={}, record=_ingest_record(
        started, summary={"arrays": sorted(arrays), "series_selection": attrs.get("series_selection"),
                          "masks": attrs.get("masks"), "ct_reason": attrs.get("ct_reason")},
        reason=findings[0]["reason"] if findings else None,
        message="; ".join(f"[{f['reason']}] {f['message']}" for f in findings) or "ingested"))


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


@dataclass(frozen=True)
class IngestOptions:
    """The user's ingest choices, validated once before any study is read."""

    overrides: SuvOverrides
    suv: SuvConfig                     # lbm formula and reference-time rule of SUV/SUL (run config ``suv``)
    pet_series: re.Pattern | None = None
    ct_series: re.Pattern | None = None
    mask_label: re.Pattern | None = None
    mask_kind: str | None = None       # "SEG" | "RTSTRUCT": lesions only from objects of this kind

    @classmethod
    def build(cls, overrides: dict | None = None, pet_series: str | None = None, ct_series: str | None = None,
              mask_label: str | None = None, mask_kind: str | None = None,
              suv: SuvConfig | None = None) -> "IngestOptions":
        if mask_kind is not None and str(mask_kind).upper() not in ("SEG", "RTSTRUCT"):
            raise ConfigError("BAD_VALUE", f"--mask-kind must be SEG or RTSTRUCT, got {mask_kind!r}")
        return cls(SuvOverrides.from_dict(overrides), suv or SuvConfig(), compile_pattern(pet_series, "--pet-series"),
                   compile_pattern(ct_series, "--ct-series"), compile_pattern(mask_label, "--mask-label"),
                   None if mask_kind is None else str(mask_kind).upper())


def _discover(src: Path, opts: IngestOptions) -> tuple[list[_Candidate], list[dict]]:
    """Pass 1: autoPET folders and DICOM studies (headers only).

    Returns the candidates and the archive-level findings that belong to no
    study (unreadable files, mask objects that match no study's PET).
    """
    candidates: list[_Candidate] = []
    nifti_dirs = sorted(p.parent for p in src.rglob("SUV.nii.gz") if is_autopet_folder(p.parent))
    for folder in nifti_dirs:
        candidates.append(_nifti_candidate(src, folder, opts))
    archive = scan_dicom_archive(src)
    findings: list[dict] = []
    if archive.unreadable:
        findings.append({"reason": "DICOM_UNREADABLE_FILE", "message": f"{archive.unreadable} file(s) with a DICOM "
                         "preamble could not be parsed and were skipped"})
    masks = []
    for n, (path, ds) in enumerate(archive.objects, start=1):
        try:
            masks.append(read_mask_header(path, ds))
        except PetCohortError as exc:
            findings.append({"reason": exc.reason, "message": f"mask object {n}: {exc.message}"})
    by_study: dict[str, list[SeriesInfo]] = {}
    for series in archive.series:
        by_study.setdefault(series.study_uid, []).append(series)
    used: set[int] = set()
    for study_uid, series in sorted(by_study.items()):
        cand = _dicom_candidate(study_uid, series, masks, opts)
        used.update(cand.mask_ids)
        candidates.append(cand)
    for i, obj in enumerate(masks):
        if i not in used:
            findings.append({"reason": "MASK_NO_MATCH", "message": f"a {obj.kind} object "
                             f"({len(obj.segments)} segments) references no PET series of the archive and shares "
                             "no PET frame of reference; it was not used"})
    return candidates, findings


def _scan_time(series: SeriesInfo) -> _dt.datetime | None:
    times = [combine(ds.get("AcquisitionDate") or ds.get("SeriesDate"), ds.get("AcquisitionTime"))
             for ds in series.headers]
    times = [t for t in times if t is not None]
    if times:
        return min(times)
    ds = series.headers[0]
    return combine(ds.get("SeriesDate"), ds.get("SeriesTime")) or combine(ds.get("StudyDate"), ds.get("StudyTime"))


@dataclass(frozen=True)
class _StudySources:
    """The series and mask objects ingest chose for one DICOM study."""

    pet: SeriesChoice
    ct: SeriesChoice
    masks: tuple[tuple[Any, str], ...]     # (MaskObject, matched_by)
    mask_findings: tuple[dict, ...] = ()   # masks of this study that match neither its series nor its frame


def _study_sources(study_uid: str, series: list[SeriesInfo], masks: list, opts: IngestOptions) -> _StudySources:
    """Series selection and mask matching of one study (headers only; raises for PET problems)."""
    pet = select_pet(series, pet_series=opts.pet_series)
    ct = select_ct(series, pet.series, ct_series=opts.ct_series)
    frame = str(pet.series.headers[0].get("FrameOfReferenceUID", "") or "") or None
    matched, findings = [], []
    for obj in masks:
        how = match_mask(obj, pet_series_uid=pet.series.series_uid, pet_frame_uid=frame)
        if how is not None:
            matched.append((obj, how))
        elif obj.study_uid == study_uid:
            findings.append({"reason": "MASK_NO_MATCH", "message": f"a {obj.kind} object of this study references "
                             "another series and another frame of reference than the chosen PET; not used"})
    return _StudySources(pet, ct, tuple(matched), tuple(findings))


def _dicom_candidate(study_uid: str, series: list[SeriesInfo], masks: list, opts: IngestOptions) -> _Candidate:
    error: PetCohortError | None = None
    chosen: _StudySources | None = None
    try:
        chosen = _study_sources(study_uid, series, masks, opts)
    except PetCohortError as exc:
        error = exc
    anchor = chosen.pet.series if chosen is not None else next((s for s in series if s.modality == "PT"), series[0])
    ids = tuple(i for i, obj in enumerate(masks) if chosen is not None and any(o is obj for o, _ in chosen.masks))
    return _Candidate(kind="dicom", patient_raw=anchor.patient_id or None, study_raw=study_uid,
                      scan_time=_scan_time(anchor), error=error, mask_ids=ids, pet_series_uid=anchor.series_uid,
                      load=lambda: _load_dicom(chosen, opts))


def locate_sources(src: str | os.PathLike, store, *, pet_series: str | None = None) -> dict[str, Any]:
    """Map the store's DICOM studies back to their source series in ``src`` (for export).

    The store keeps no UID: a source study is found by its keyed pseudonym
    (the study index), and its PET series by the keyed series pseudonym that
    ingest recorded (``pet_series_pseudonym``), else by re-running the series
    selection. Returns ``{study key: SourceStudy}`` for every study found, and
    ``{study key: PetCohortError}`` for a stored DICOM study whose source is
    absent (``EXPORT_SOURCE_NOT_FOUND``) or whose PET cannot be chosen again.
    """
    opts = IngestOptions.build(pet_series=pet_series)
    index: dict[str, dict] = dict(store.read_json(INDEX) or {})
    found: dict[str, Any] = {}
    by_study: dict[str, list[SeriesInfo]] = {}
    for series in scan_dicom_archive(src).series:
        by_study.setdefault(series.study_uid, []).append(series)
    for study_uid, series in by_study.items():
        entry = index.get(store.pseudonym(f"dicom:{study_uid}", prefix="S"))
        if entry is None or entry.get("status") != "ingested":
            continue
        key = entry["key"]
        wanted = store.study_attrs(key).get("pet_series_pseudonym")
        pets = [s for s in series if s.modality == "PT"
                and store.pseudonym(f"series:{s.series_uid}", prefix="R") == wanted]
        try:
            pet = pets[0] if pets else select_pet(series, pet_series=opts.pet_series).series
        except PetCohortError as exc:
            found[key] = exc
            continue
        order = slice_geometry(pet.headers)[0]
        found[key] = SourceStudy(pet=pet, pet_headers=tuple(pet.headers[i] for i in order))
    for entry in index.values():
        key = entry.get("key")
        if entry.get("status") == "ingested" and key not in found and \
                store.study_attrs(key).get("source") == "dicom":
            found[key] = InputError("EXPORT_SOURCE_NOT_FOUND", f"study {key} was not found in the source folder "
                                    "(no study there has its pseudonym)")
    return found


@dataclass(frozen=True)
class SourceStudy:
    """A stored study's source PET series (headers; ``pet_headers`` in array z order)."""

    pet: SeriesInfo
    pet_headers: tuple


def _uptake(report: dict) -> tuple[float | None, str | None]:
    """Minutes from injection to the decay reference time (START) or to the scan start."""
    end = report.get("reference_time") or report.get("scan_time")
    if not report.get("injection_time"):
        return None, "SUV_MISSING_INJECTION_TIME"
    if end is None:
        return None, "SUV_MISSING_REFERENCE_TIME"
    delta = _dt.datetime.fromisoformat(end) - _dt.datetime.fromisoformat(report["injection_time"])
    return delta.total_seconds() / 60.0, None


def _load_dicom(chosen: _StudySources, opts: IngestOptions) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
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
    mask_arrays, attrs["masks"] = _dicom_masks(chosen, PetGrid.from_headers(pet_vol.headers), opts)
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


def _dicom_masks(chosen: _StudySources, grid, opts: IngestOptions) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
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


def _nifti_candidate(src: Path, folder: Path, opts: IngestOptions) -> _Candidate:
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
                      load=lambda: _load_nifti(folder, opts))


def _load_nifti(folder: Path, opts: IngestOptions) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
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
