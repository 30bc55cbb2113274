"""Discovery, pass 1 of ingest: the candidate studies of a source tree, from headers only.

autoPET NIfTI folders (``SUV.nii.gz`` + ``study.json``) and DICOM studies
(series grouped by StudyInstanceUID). For each DICOM study the PET and CT
series are chosen (:mod:`petcohort.storage.dicom_select`) and the archive's
SEG / RTSTRUCT objects matched to the chosen PET (by referenced series, else
by frame of reference: docs/methods.md, "DICOM masks and series selection").
Findings that belong to no study (unreadable files, mask objects matching no
PET) are returned beside the candidates. Pixels are read later, one study at
a time, by :mod:`petcohort.pipelines.ingest_load`.
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path

from petcohort.engine.errors import InputError, PetCohortError
from petcohort.pipelines.ingest_load import load_dicom, load_nifti
from petcohort.pipelines.ingest_types import Candidate, IngestOptions, StudySources
from petcohort.storage.dicom_masks import match_mask, read_mask_header
from petcohort.storage.dicom_read import SeriesInfo, scan_dicom_archive
from petcohort.storage.dicom_select import select_ct, select_pet
from petcohort.storage.dicom_time import combine
from petcohort.storage.nifti import is_autopet_folder, read_sidecar

__all__ = ["discover"]


def discover(src: Path, opts: IngestOptions) -> tuple[list[Candidate], list[dict]]:
    """Pass 1: autoPET folders and DICOM studies (headers only).

    Returns the candidates and the archive-level findings that belong to no
    study (unreadable files, mask objects that match no study's PET).
    """
    candidates: list[Candidate] = []
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
    """Scan start: the earliest acquisition date-time, else the series, else the study date-time."""
    times = [combine(ds.get("AcquisitionDate") or ds.get("SeriesDate"), ds.get("AcquisitionTime"))
             for ds in series.headers]
    times = [t for t in times if t is not None]
    if times:
        return min(times)
    ds = series.headers[0]
    return combine(ds.get("SeriesDate"), ds.get("SeriesTime")) or combine(ds.get("StudyDate"), ds.get("StudyTime"))


def _study_sources(study_uid: str, series: list[SeriesInfo], masks: list, opts: IngestOptions) -> StudySources:
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
    return StudySources(pet, ct, tuple(matched), tuple(findings))


def _dicom_candidate(study_uid: str, series: list[SeriesInfo], masks: list, opts: IngestOptions) -> Candidate:
    """One DICOM study; a series selection error is kept on the candidate so that the study is still keyed."""
    error: PetCohortError | None = None
    chosen: StudySources | None = None
    try:
        chosen = _study_sources(study_uid, series, masks, opts)
    except PetCohortError as exc:
        error = exc
    anchor = chosen.pet.series if chosen is not None else next((s for s in series if s.modality == "PT"), series[0])
    ids = tuple(i for i, obj in enumerate(masks) if chosen is not None and any(o is obj for o, _ in chosen.masks))
    return Candidate(kind="dicom", patient_raw=anchor.patient_id or None, study_raw=study_uid,
                     scan_time=_scan_time(anchor), error=error, mask_ids=ids, pet_series_uid=anchor.series_uid,
                     load=lambda: load_dicom(chosen, opts))


def _nifti_candidate(src: Path, folder: Path, opts: IngestOptions) -> Candidate:
    """One autoPET folder; scan date from ``study.json`` (``scan_datetime``, else ``study_date``)."""
    rel = folder.relative_to(src).as_posix()
    try:
        meta = read_sidecar(folder)
    except PetCohortError as exc:
        return Candidate(kind="nifti", patient_raw=None, study_raw=rel, scan_time=None, load=lambda: ({}, {}),
                         error=exc)
    scan = None
    for name in ("scan_datetime", "study_date"):
        if scan is None and meta.get(name):
            try:
                scan = _dt.datetime.fromisoformat(str(meta[name]))
            except ValueError:
                return Candidate(kind="nifti", patient_raw=None, study_raw=rel, scan_time=None,
                                 load=lambda: ({}, {}), error=InputError(
                                     "NIFTI_BAD_SIDECAR", f"study.json {name} is not an ISO date(-time)"))
    tp = meta.get("timepoint")
    return Candidate(kind="nifti", patient_raw=str(meta.get("patient_id") or "") or None,
                     study_raw=str(meta.get("study_uid") or rel), scan_time=scan,
                     timepoint_hint=int(tp) if isinstance(tp, int) else None,
                     load=lambda: load_nifti(folder, opts))
