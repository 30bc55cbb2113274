"""Which PET and CT series of a DICOM study petcohort uses, and why.

Rules (docs/methods.md, "Series selection"):

- PET candidates are the PET image series (Modality PT) of the study.
  A series that is not attenuation corrected (``CorrectedImage`` (0028,0051)
  without ``ATTN``: a NAC reconstruction, or no CorrectedImage at all) is never
  used. Dynamic and gated series (``SeriesType`` (0054,1000) first value
  DYNAMIC/GATED, or more than one time slice / time slot) give way to static
  ones (STATIC, WHOLE BODY). Secondary captures and projections (ImageType
  SECONDARY, MIP, PROJECTION) give way to primary images.
- Several series still left: the user's ``--pet-series`` regular expression
  (searched in SeriesDescription) decides; without it the study fails with
  ``PET_SERIES_AMBIGUOUS`` naming the candidates. Never one of several
  silently.
- CT: the CT image series sharing the chosen PET's FrameOfReferenceUID
  (localizers/scouts excluded); ``--ct-series`` decides between several.
  A study without CT is valid: its CT-needing stages fail later with a reason.

Each choice carries its rule and a description of every candidate
(SeriesDescription, AC/NAC, static/dynamic, slice count; never a UID), which
ingest records in the study's provenance.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from petcohort.engine.errors import ConfigError, DicomError
from petcohort.storage.dicom_read import SeriesInfo

__all__ = ["SeriesChoice", "select_pet", "select_ct", "describe", "compile_pattern"]


@dataclass(frozen=True)
class SeriesChoice:
    """A chosen series (``series`` None: none chosen) with the rule that chose it.

    ``candidates`` describes every series considered (JSON-ready, no UIDs);
    ``reason`` is the code why nothing was chosen (CT only: PET failures raise).
    """

    series: SeriesInfo | None
    rule: str
    candidates: list[dict[str, Any]] = field(default_factory=list)
    reason: str | None = None

    def provenance(self) -> dict[str, Any]:
        return {"rule": self.rule, "reason": self.reason, "candidates": self.candidates}


def compile_pattern(pattern: str | None, option: str) -> re.Pattern | None:
    """The user's series/label regular expression, compiled once (case-insensitive)."""
    if pattern is None:
        return None
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ConfigError("BAD_REGEX", f"{option} {pattern!r} is not a valid regular expression: {exc}") from None


def _values(ds: Dataset, keyword: str) -> list[str]:
    value = ds.get(keyword)
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    return [str(v).strip().upper() for v in items]


def _pet_kind(ds: Dataset) -> str:
    series_type = _values(ds, "SeriesType")
    first = series_type[0] if series_type else ""
    if first == "GATED" or int(ds.get("NumberOfTimeSlots", 1) or 1) > 1:
        return "gated"
    if first == "DYNAMIC" or int(ds.get("NumberOfTimeSlices", 1) or 1) > 1:
        return "dynamic"
    return "static"


def _secondary(ds: Dataset) -> bool:
    image_type = _values(ds, "ImageType")
    return "SECONDARY" in image_type[1:2] or any(t in image_type for t in ("MIP", "PROJECTION IMAGE", "PROJECTION"))


def describe(series: SeriesInfo) -> dict[str, Any]:
    """JSON description of a series for provenance and messages (no UIDs, no identifiers)."""
    ds = series.headers[0]
    out: dict[str, Any] = {"modality": series.modality,
                           "description": str(ds.get("SeriesDescription", "") or ""),
                           "images": len(series.headers)}
    if series.modality == "PT":
        out.update(corrected_image=_values(ds, "CorrectedImage"), attenuation_corrected="ATTN" in
                   _values(ds, "CorrectedImage"), kind=_pet_kind(ds), secondary=_secondary(ds))
    else:
        out.update(image_type=_values(ds, "ImageType"))
    return out


def _names(cands: list[tuple[SeriesInfo, dict]]) -> str:
    return "; ".join(f"{d['description'] or '(no SeriesDescription)'} ({d['images']} images)" for _, d in cands)


def select_pet(series: list[SeriesInfo], *, pet_series: re.Pattern | None = None) -> SeriesChoice:
    """Choose the PET series of one study.

    Parameters
    ----------
    series : list of SeriesInfo
        All image series of the study.
    pet_series : compiled pattern, optional
        The user's ``--pet-series`` (searched in SeriesDescription).

    Raises
    ------
    DicomError
        ``INGEST_MISSING_PET`` (no PET image series), ``PET_NO_AC_SERIES``
        (only non-attenuation-corrected series), ``PET_SERIES_NO_MATCH``
        (``--pet-series`` matches no attenuation-corrected series),
        ``PET_SERIES_AMBIGUOUS`` (several remain; the message lists them).
    """
    pets = [(s, describe(s)) for s in series if s.modality == "PT"]
    if not pets:
        raise DicomError("INGEST_MISSING_PET", "the study has no PET (Modality PT) image series")
    described = [d for _, d in pets]
    ac = [(s, d) for s, d in pets if d["attenuation_corrected"]]
    if not ac:
        raise DicomError("PET_NO_AC_SERIES", f"none of the study's {len(pets)} PET series is attenuation corrected "
                         f"(CorrectedImage without ATTN): {_names(pets)}; a NAC series is never used")
    if pet_series is not None:
        chosen = [(s, d) for s, d in ac if pet_series.search(d["description"])]
        if not chosen:
            raise DicomError("PET_SERIES_NO_MATCH", f"--pet-series {pet_series.pattern!r} matches none of the "
                             f"attenuation-corrected PET series: {_names(ac)}")
        rule = "pet_series_option"
    else:
        chosen, rule = ac, "attenuation_corrected"
        for keep, name in ((lambda d: d["kind"] == "static", "static_over_dynamic_or_gated"),
                           (lambda d: not d["secondary"], "primary_over_secondary")):
            preferred = [(s, d) for s, d in chosen if keep(d)]
            if preferred and len(preferred) < len(chosen):
                chosen, rule = preferred, f"{rule}+{name}"
    if len(chosen) > 1:
        hint = "refine --pet-series" if pet_series is not None else "choose one with --pet-series REGEX"
        raise DicomError("PET_SERIES_AMBIGUOUS", f"{len(chosen)} attenuation-corrected PET series qualify: "
                         f"{_names(chosen)}; {hint} (matched against SeriesDescription)")
    for d in described:
        d["chosen"] = d is chosen[0][1]
    return SeriesChoice(series=chosen[0][0], rule=rule, candidates=described)


def _frame(series: SeriesInfo) -> str:
    return str(series.headers[0].get("FrameOfReferenceUID", "") or "")


def select_ct(series: list[SeriesInfo], pet: SeriesInfo, *, ct_series: re.Pattern | None = None) -> SeriesChoice:
    """Choose the CT series for ``pet`` (``series`` None with a reason when the study has none usable).

    Raises
    ------
    DicomError
        ``CT_SERIES_AMBIGUOUS`` when several CT series share the PET's frame
        of reference and ``--ct-series`` does not single one out.
    """
    cts = [(s, describe(s)) for s in series if s.modality == "CT"]
    described = [d for _, d in cts]
    cts = [(s, d) for s, d in cts if "LOCALIZER" not in d["image_type"]]
    if not cts:
        return SeriesChoice(None, "no_ct", described, reason="NO_CT_SERIES")
    frame = _frame(pet)
    same = [(s, d) for s, d in cts if frame and _frame(s) == frame]
    rule = "same_frame_of_reference"
    if not same:
        if len(cts) != 1:
            return SeriesChoice(None, "no_ct", described, reason="NO_CT_SAME_FRAME")
        same, rule = cts, "only_ct_other_frame_of_reference"
    if ct_series is not None:
        picked = [(s, d) for s, d in same if ct_series.search(d["description"])]
        if not picked:
            raise DicomError("CT_SERIES_NO_MATCH", f"--ct-series {ct_series.pattern!r} matches none of the CT "
                             f"series: {_names(same)}")
        same, rule = picked, f"{rule}+ct_series_option"
    if len(same) > 1:
        raise DicomError("CT_SERIES_AMBIGUOUS", f"{len(same)} CT series share the PET's frame of reference: "
                         f"{_names(same)}; choose one with --ct-series REGEX")
    for d in described:
        d["chosen"] = d is same[0][1]
    return SeriesChoice(same[0][0], rule, described)
