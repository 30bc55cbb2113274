"""Keys of the discovered studies: pseudonyms, timepoints per patient (by scan date), days since baseline.

Assigned for every candidate before any study is written, so that a study
that fails to load does not renumber the others. Studies already in the
store's ingest index keep their keys; a new study may only come after its
patient's stored studies (renumbering stored studies is refused). Raw
identifiers reach only the store's keyed ``pseudonym``.
"""
from __future__ import annotations

import datetime as _dt

from petcohort.engine.errors import InputError
from petcohort.pipelines.ingest_types import Candidate
from petcohort.storage.keys import study_key

__all__ = ["assign_keys"]


def assign_keys(store, candidates: list[Candidate], index: dict[str, dict]) -> None:
    """Pseudonyms, timepoints (per patient, by scan date) and days since baseline.

    Studies already in the index keep their keys; new studies of a known
    patient must come after the patient's known studies (else
    ``INGEST_TIMEPOINT_CONFLICT``: renumbering stored studies is refused).
    """
    by_patient: dict[str, list[Candidate]] = {}
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
