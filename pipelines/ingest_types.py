"""The data that the ingest passes hand each other.

:class:`IngestOptions` (the user's choices, validated once),
:class:`Candidate` (one study found by discovery, pass 1, headers only) and
:class:`StudySources` (the series and mask objects chosen for one DICOM
study). Discovery (:mod:`petcohort.pipelines.ingest_discover`), loading
(:mod:`petcohort.pipelines.ingest_load`), keying
(:mod:`petcohort.pipelines.ingest_timepoints`) and the orchestration
(:mod:`petcohort.pipelines.ingest`) all import from here, never from each
other in a cycle.

Privacy: the raw identifiers a :class:`Candidate` carries (``patient_raw``,
``study_raw``, ``pet_series_uid``) are only ever passed to the store's
keyed ``pseudonym``.
"""
from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from petcohort.engine.errors import ConfigError, PetCohortError
from petcohort.pipelines.config import SuvConfig
from petcohort.storage.dicom_select import SeriesChoice, compile_pattern
from petcohort.storage.suv_header import SuvOverrides

__all__ = ["IngestOptions", "Candidate", "StudySources"]


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


@dataclass
class Candidate:
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


@dataclass(frozen=True)
class StudySources:
    """The series and mask objects ingest chose for one DICOM study."""

    pet: SeriesChoice
    ct: SeriesChoice
    masks: tuple[tuple[Any, str], ...]     # (MaskObject, matched_by)
    mask_findings: tuple[dict, ...] = ()   # masks of this study that match neither its series nor its frame
