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

The passes live in their own modules: discovery of the candidate studies
(:mod:`petcohort.pipelines.ingest_discover`), their keys and timepoints
(:mod:`petcohort.pipelines.ingest_timepoints`), loading one study's arrays
and attrs (:mod:`petcohort.pipelines.ingest_load`) and the data they share
(:mod:`petcohort.pipelines.ingest_types`). This module orchestrates them and
writes the store; every public name stays importable from here.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from petcohort.engine import __version__
from petcohort.engine.errors import DicomError, InputError, PetCohortError, StoreError
from petcohort.pipelines.config import SuvConfig
from petcohort.pipelines.ingest_discover import discover
from petcohort.pipelines.ingest_timepoints import assign_keys
from petcohort.pipelines.ingest_types import Candidate, IngestOptions
from petcohort.storage.dicom_read import SeriesInfo, scan_dicom_archive, scan_dicom_tree, slice_geometry
from petcohort.storage.dicom_select import compile_pattern, select_pet
from petcohort.storage.suv_header import suv_from_datasets

__all__ = ["ingest_tree", "suv_report", "locate_sources", "SourceStudy", "IngestOptions"]

log = logging.getLogger(__name__)
INDEX = "ingest_index"   # cohort JSON: study pseudonym -> {key, patient, scan_date}


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
    candidates, findings = discover(src, opts)
    result: dict[str, list] = {"ingested": [], "skipped": [], "failed": [],
                               "warnings": [{"key": None, **f} for f in findings]}
    index: dict[str, dict] = dict(store.read_json(INDEX) or {})
    assign_keys(store, candidates, index)
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


def _record_failure(store, cand: Candidate, exc: PetCohortError, started: float) -> None:
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
