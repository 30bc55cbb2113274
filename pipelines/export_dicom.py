"""Export a cohort's lesion results back to DICOM: one SEG and one SR TID 1500 per study and source.

The store holds no UID, so the source archive's headers are read again:
:func:`petcohort.pipelines.ingest.locate_sources` finds each stored study's
PET series by its keyed pseudonym. A study is skipped with a reason (and the
others go on) when its source is absent (``EXPORT_SOURCE_NOT_FOUND``), its
PET grid differs from the stored one (``EXPORT_GEOMETRY_MISMATCH``), it has
no committed ``quantify`` record (``EXPORT_NOT_QUANTIFIED``), or its ingest
failed (``EXPORT_NOT_INGESTED``); a source is skipped when it is not in the
quantify record (``EXPORT_SOURCE_MISSING``) or its lesion labels no longer
match that record (``EXPORT_LABELS_MISMATCH``: another ``--connectivity``, or
a mask changed after quantify). A writer error skips its source with the
writer's reason, or ``INTERNAL_ERROR`` (exception type only) for a foreign one.

Lesions and values are exactly the quantify records' (the ``lesions`` table's
source): lesion ``i`` of the label map of
:func:`petcohort.pipelines.lesion_labels.study_lesion_labels` is segment
``i`` of the SEG. A study whose mask is empty gets no SEG (a SEG needs a
segment) but still an SR, whose whole-body group records MTV = TLG = 0.

Output: ``<out>/<study key>/<source>/seg.dcm`` and ``sr.dcm`` (pseudonymous
names; the files themselves carry the source's patient and study identity,
since they go back to the same archive), and ``<out>/export_report.json``.
Nothing identifying is logged or reported.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pydicom.uid import generate_uid

from petcohort.engine import __version__
from petcohort.engine.errors import InputError, PetCohortError
from petcohort.storage.dicom_read import slice_geometry

__all__ = ["export_dicom", "export_study", "tracking_ids", "REPORT_NAME", "GEOMETRY_ATOL_MM"]

log = logging.getLogger(__name__)
REPORT_NAME = "export_report.json"
#: largest difference (mm) between the source headers' and the stored spacing/origin.
GEOMETRY_ATOL_MM = 1e-3
_SOURCE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_MANUAL = re.compile(r"^manual")     # seg/manual* are expert masks: MANUAL segments; the rest are AUTOMATIC


@dataclass(frozen=True)
class _Tracks:
    """(study, source, lesion id) -> (tracking id, tracking UID)."""

    ids: dict[tuple[str, str, int], tuple[str, str]]

    def get(self, key: str, source: str, lesion: int) -> tuple[str | None, str | None]:
        return self.ids.get((key, source, int(lesion)), (None, None))


def tracking_ids(cohort) -> _Tracks:
    """Tracking ids from the committed ``track`` records.

    A baseline lesion ``b`` that has a partner in a follow-up is ``track b``
    on the baseline and on every follow-up lesion matched to it (a follow-up
    lesion merged from several baseline lesions is ``track b1+b2``); new and
    vanished lesions have none. The UID is derived from the patient key,
    baseline source and id, so it is the same on every timepoint's export.
    """
    partners: dict[tuple[str, str, int], set[int]] = {}
    baseline_of: dict[tuple[str, str, int], tuple[str, str]] = {}
    for key, summary in cohort.summaries("track").items():
        bl_key = cohort.baseline_of(key)
        if bl_key is None:
            continue
        for src, tr in (summary.get("sources") or {}).items():
            bl_src = (tr or {}).get("baseline_source") or src
            for m in (tr or {}).get("matches") or []:
                b, f = m.get("baseline_lesion"), m.get("followup_lesion")
                if b is None or f is None:
                    continue
                partners.setdefault((bl_key, bl_src, int(b)), set()).add(int(b))
                partners.setdefault((key, src, int(f)), set()).add(int(b))
                baseline_of[(bl_key, bl_src, int(b))] = baseline_of[(key, src, int(f))] = (bl_key, bl_src)
    ids: dict[tuple[str, str, int], tuple[str, str]] = {}
    for where, bs in partners.items():
        bl_key, bl_src = baseline_of[where]
        track = "track " + "+".join(str(b) for b in sorted(bs))
        patient = cohort.meta(bl_key)["patient"]
        ids[where] = (track, generate_uid(entropy_srcs=["petcohort track", str(patient), bl_src, track]))
    return _Tracks(ids)


def _skip(study: str, reason: str, message: str, source: str | None = None) -> dict[str, Any]:
    log.warning("export of %s%s skipped: [%s]", study, f"/{source}" if source else "", reason)
    return {"study": study, "source": source, "reason": reason, "message": message}


def _unexpected(exc: Exception) -> str:
    # a foreign exception's text may quote header values (names, UIDs): report its type only
    return f"unexpected {type(exc).__name__} while exporting"


def _geometry_problem(headers: Sequence, attrs: dict[str, Any]) -> str | None:
    """Why the source headers' grid differs from the stored study's spacing/origin (None when equal)."""
    order, spacing, origin, _ = slice_geometry(headers)
    if list(order) != list(range(len(headers))):
        return "the source slices are not in the stored z order"
    for name, got in (("spacing", spacing), ("origin", origin)):
        stored = attrs.get(name)
        if stored is None or not np.allclose(np.asarray(got, float), np.asarray(stored, float), rtol=0,
                                             atol=GEOMETRY_ATOL_MM):
            return (f"source PET {name} {np.round(got, 3).tolist()} mm differs from the stored "
                    f"{None if stored is None else np.round(np.asarray(stored, float), 3).tolist()} mm")
    return None


def _check_labels(labels, rows: list[dict[str, Any]]) -> str | None:
    """Why the label map does not match the quantify lesion rows (ids 1..n and voxel counts)."""
    counts = np.bincount(labels.labels.ravel(), minlength=labels.n + 1)[1:]
    ids = sorted(int(r["lesion"]) for r in rows)
    if len(counts) != labels.n or ids != list(range(1, labels.n + 1)):
        return f"{labels.n} lesions in the mask, {len(rows)} in the quantify record"
    bad = [r["lesion"] for r in rows if int(counts[int(r["lesion"]) - 1]) != int(r.get("voxels", -1))]
    if bad:
        return f"voxel counts of lesion(s) {bad[:10]} differ from the quantify record"
    return None


def _lesions(key: str, src: str, labels, rows: list[dict[str, Any]], tracks: _Tracks) -> list:
    from petcohort.storage.dicom_export import ExportLesion, segment_label  # noqa: PLC0415 - highdicom is heavy

    out = []
    for row in sorted(rows, key=lambda r: int(r["lesion"])):
        lesion = int(row["lesion"])
        parent = labels.segment[lesion - 1] if lesion - 1 < len(labels.segment) else None
        source_label = row.get("segment_label") or (parent or {}).get("label")
        track_id, track_uid = tracks.get(key, src, lesion)
        out.append(ExportLesion(lesion=lesion, label=segment_label(lesion, source_label=source_label,
                                                                   tracking_id=track_id),
                                values=row, tracking_id=track_id, tracking_uid=track_uid))
    return out


@dataclass(frozen=True)
class _Source:
    """One located study, ready to export: its source PET headers (array order) and stored context."""

    key: str
    attrs: dict[str, Any]
    headers: list
    flips: tuple[bool, bool]
    quantify: dict[str, Any]
    with_ct: bool

    @property
    def grid(self) -> tuple[int, int, int]:
        return len(self.headers), int(self.headers[0].Rows), int(self.headers[0].Columns)


def _export_source(store, study: _Source, src: str, index: int, out: Path, *, tracks: _Tracks,
                   connectivity: int) -> dict[str, Any]:
    """Write ``<out>/<key>/<src>/seg.dcm`` (when there are lesions) and ``sr.dcm``; the report entry.

    Raises ``PetCohortError`` (``EXPORT_SOURCE_MISSING``, ``EXPORT_GEOMETRY_MISMATCH``,
    ``EXPORT_LABELS_MISMATCH``, or a store/writer reason) to skip this source.
    """
    from petcohort.pipelines.lesion_labels import study_lesion_labels  # noqa: PLC0415
    from petcohort.storage.dicom_export import WriterInfo, build_measurement_report, build_segmentation  # noqa: PLC0415

    key = study.key
    rows = (study.quantify.get("lesions") or {}).get(src)
    if rows is None:
        raise InputError("EXPORT_SOURCE_MISSING", f"source {src!r} is not in the study's quantify record")
    labels = study_lesion_labels(store, key, src, connectivity=connectivity)
    if labels.labels.shape != study.grid:
        raise InputError("EXPORT_GEOMETRY_MISMATCH", f"stored grid {list(labels.labels.shape)} differs from the "
                         f"source series {list(study.grid)} (slices, rows, columns)")
    problem = _check_labels(labels, rows)
    if problem:
        raise InputError("EXPORT_LABELS_MISMATCH", f"{problem}; export with the connectivity quantify used "
                         f"(got {connectivity})")
    info = WriterInfo(source=src, automatic=not _MANUAL.match(src), series_number=9001 + 2 * index)
    lesions = _lesions(key, src, labels, rows, tracks)
    seg = build_segmentation(study.headers, labels.labels, lesions, flips=study.flips, info=info) if lesions else None
    del labels
    sr = build_measurement_report(study.headers, lesions, segmentation=seg,
                                  study_values=(study.quantify.get("sources") or {}).get(src) or {}, info=info,
                                  lbm_formula=(study.attrs.get("suv") or {}).get("lbm_formula"),
                                  timepoint=study.attrs.get("timepoint"), with_ct=study.with_ct)
    folder = out / key / src
    folder.mkdir(parents=True, exist_ok=True)
    entry = {"study": key, "source": src, "lesions": len(lesions), "seg": None, "sr": f"{key}/{src}/sr.dcm"}
    if seg is not None:
        seg.save_as(folder / "seg.dcm", enforce_file_format=True)
        entry["seg"] = f"{key}/{src}/seg.dcm"
    sr.save_as(folder / "sr.dcm", enforce_file_format=True)
    log.info("exported %s/%s: %d lesion(s)%s", key, src, len(lesions), "" if seg is not None else ", SR only")
    return entry


def export_study(store, key: str, source_study, quantify: dict[str, Any], sources: Sequence[str], out: Path, *,
                 tracks: _Tracks, connectivity: int = 26) -> tuple[list[dict], list[dict]]:
    """Write the SEG and SR of each of ``sources`` of one located study; a failing source is skipped alone.

    Returns
    -------
    (exported, skipped) : lists of dict
        Report entries (``study``, ``source``, ``lesions``, ``seg``, ``sr``)
        and skips (``study``, ``source``, ``reason``, ``message``).
    """
    attrs = store.study_attrs(key)
    headers = list(source_study.pet_headers)
    problem = _geometry_problem(headers, attrs)
    if problem:
        return [], [_skip(key, "EXPORT_GEOMETRY_MISMATCH", problem)]
    study = _Source(key=key, attrs=attrs, headers=headers, flips=slice_geometry(headers)[3], quantify=quantify,
                    with_ct=store.has_array(key, "ct"))
    exported, skipped = [], []
    for index, src in enumerate(sources):
        try:
            exported.append(_export_source(store, study, src, index, out, tracks=tracks, connectivity=connectivity))
        except PetCohortError as exc:
            skipped.append(_skip(key, exc.reason, exc.message, src))
        except Exception as exc:  # noqa: BLE001 - e.g. highdicom refusing odd source headers: skip this source only
            skipped.append(_skip(key, "INTERNAL_ERROR", _unexpected(exc), src))
    return exported, skipped


def _wanted_sources(quantify: dict[str, Any], sources: Sequence[str] | None) -> list[str]:
    present = sorted((quantify.get("lesions") or {}).keys())
    return present if sources is None else list(sources)


def export_dicom(store, src: str | os.PathLike, out: str | os.PathLike, *, sources: Sequence[str] | None = None,
                 pet_series: str | None = None, connectivity: int = 26) -> dict[str, Any]:
    """Export every stored DICOM study's lesions as DICOM SEG + SR TID 1500 (module docstring).

    Parameters
    ----------
    store : CohortStore
    src : path
        The DICOM archive the store was ingested from.
    out : path
        Output folder (created).
    sources : sequence of str, optional
        Segmentation sources to export (default: every source in each
        study's quantify record).
    pet_series : str, optional
        The ``--pet-series`` expression given to ingest, if any.
    connectivity : int
        The lesion connectivity quantify used (``RunConfig.connectivity``).

    Returns
    -------
    dict
        ``exported`` (``study``, ``source``, ``lesions``, ``seg``, ``sr``; paths
        relative to ``out``), ``skipped`` (``study``, ``source``, ``reason``,
        ``message``), ``code_version``; also written to ``out/export_report.json``.
    """
    from petcohort.pipelines.ingest import locate_sources  # noqa: PLC0415
    from petcohort.pipelines.tables_gather import gather  # noqa: PLC0415

    for name in sources or ():
        if not _SOURCE_NAME.match(name):
            raise InputError("EXPORT_BAD_SOURCE", f"source name {name!r} is not a store source name")
    if not Path(src).is_dir():
        raise InputError("FILE_NOT_FOUND", "the source archive folder given to export does not exist")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    located = locate_sources(src, store, pet_series=pet_series)
    cohort = gather(store)
    tracks = tracking_ids(cohort)
    report: dict[str, Any] = {"exported": [], "skipped": [], "code_version": str(__version__)}
    for key in cohort.keys:
        _export_one(store, key, located.get(key), cohort, sources, out, tracks, connectivity, report)
    (out / REPORT_NAME).write_text(json.dumps(report, indent=2, sort_keys=True))
    return report


def _export_one(store, key: str, found, cohort, sources, out: Path, tracks: _Tracks, connectivity: int,
                 report: dict[str, Any]) -> None:
    """Export one study into ``report`` (skips recorded, never raised)."""
    if cohort.attrs.get(key, {}).get("ingest_failed"):
        report["skipped"].append(_skip(key, "EXPORT_NOT_INGESTED", "the study's ingest failed; nothing to export"))
        return
    if found is None:
        report["skipped"].append(_skip(key, "EXPORT_SOURCE_NOT_FOUND", "no source study in the archive for this "
                                       "study (it was not ingested from DICOM, or from another archive)"))
        return
    if isinstance(found, PetCohortError):
        report["skipped"].append(_skip(key, found.reason, found.message))
        return
    quantify = cohort.summaries("quantify").get(key)
    if quantify is None:
        report["skipped"].append(_skip(key, "EXPORT_NOT_QUANTIFIED", "the study has no committed quantify "
                                       "record; run the pipeline first"))
        return
    try:
        exported, skipped = export_study(store, key, found, quantify, _wanted_sources(quantify, sources), out,
                                         tracks=tracks, connectivity=connectivity)
    except PetCohortError as exc:
        exported, skipped = [], [_skip(key, exc.reason, exc.message)]
    except Exception as exc:  # noqa: BLE001 - one bad study must not stop the others
        exported, skipped = [], [_skip(key, "INTERNAL_ERROR", _unexpected(exc))]
    report["exported"].extend(exported)
    report["skipped"].extend(skipped)
