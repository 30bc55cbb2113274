"""Times of a PET series for SUV: injection time, decay reference time (docs/methods.md rules 1-4).

Full date-times throughout, so midnight crossings come out right. Sources:
QIBA SUV vendor-neutral pseudo-code; IBSI-SUV manual (frame back-computation,
"always back-compute" option); cornerstonejs/calculate-suv (GE private scan
date-time (0009,100D)).
"""
from __future__ import annotations

import datetime as _dt
import logging
from typing import Any, Sequence

from pydicom.dataset import Dataset

from petcohort.engine.errors import SuvError
from petcohort.engine.kernels import suv as K
from petcohort.storage.dicom_time import combine, parse_datetime

__all__ = ["GE_SCAN_DATETIME", "REFERENCE_RULES", "header_number", "private_value", "acquisition_datetime",
           "injection_from_start_time", "reference_time"]

log = logging.getLogger(__name__)

GE_SCAN_DATETIME = (0x0009, 0x100D)
#: The reference-time rules of docs/methods.md, in their default order.
REFERENCE_RULES = ("series_time", "ge_private", "frame_backcompute", "earliest_acquisition")


def header_number(value: Any) -> float | None:
    """A DS/IS/float/bytes element value -> float, None when empty/unparsable."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
        if value is None:
            return None
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace").strip("\x00 ")
        if not value:
            return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def private_value(ds: Dataset, tag: tuple[int, int]) -> Any:
    """The raw value of a (private) tag, or None (bytes when read with implicit VR)."""
    elem = ds.get(tag)
    return None if elem is None else elem.value


def acquisition_datetime(ds: Dataset) -> _dt.datetime | None:
    """AcquisitionDate (else SeriesDate) + AcquisitionTime, else AcquisitionDateTime; None when absent."""
    t = combine(ds.get("AcquisitionDate") or ds.get("SeriesDate"), ds.get("AcquisitionTime"))
    return t if t is not None else parse_datetime(ds.get("AcquisitionDateTime"))


def injection_from_start_time(datasets: Sequence[Dataset], item: Dataset) -> tuple[_dt.datetime, str]:
    """RadiopharmaceuticalStartTime on the series date, one day earlier when that is after the scan."""
    first = datasets[0]
    injection = combine(first.get("SeriesDate"), item.get("RadiopharmaceuticalStartTime"))
    if injection is None:
        raise SuvError("SUV_MISSING_INJECTION_TIME", "RadiopharmaceuticalStartDateTime (0018,1078) is missing and "
                       "RadiopharmaceuticalStartTime (0018,1072) with SeriesDate (0008,0021) cannot replace it; "
                       "give an injection_datetime override")
    acquisitions = [t for t in (acquisition_datetime(ds) for ds in datasets) if t is not None]
    series = combine(first.get("SeriesDate"), first.get("SeriesTime"))
    scan = min(acquisitions) if acquisitions else series
    if scan is not None and injection > scan:
        return injection - _dt.timedelta(days=1), "start_time_previous_day"
    return injection, "start_time_on_series_date"


def reference_time(datasets: Sequence[Dataset], half_life: float, *,
                   always_backcompute: bool = False) -> tuple[_dt.datetime, str]:
    """t_ref for DecayCorrection START: rules 1-4 of docs/methods.md, the first that applies.

    Returns
    -------
    (datetime, str)
        The reference time and the rule that gave it (one of :data:`REFERENCE_RULES`).

    Raises
    ------
    SuvError
        ``SUV_MISSING_REFERENCE_TIME`` when no rule applies.
    """
    first = datasets[0]
    acquisitions = [t for t in (acquisition_datetime(ds) for ds in datasets) if t is not None]
    earliest = min(acquisitions) if acquisitions else None

    def series_time() -> _dt.datetime | None:
        series = combine(first.get("SeriesDate"), first.get("SeriesTime"))
        if series is not None and earliest is not None and series > earliest:
            log.info("SeriesTime after the earliest AcquisitionTime: post-processed series, rule 1 skipped")
            return None
        return series

    def ge_private() -> _dt.datetime | None:
        return parse_datetime(private_value(first, GE_SCAN_DATETIME))

    def frame_backcompute() -> _dt.datetime | None:
        candidates = []
        for ds in datasets:
            frame_ref = header_number(ds.get("FrameReferenceTime"))
            duration = header_number(ds.get("ActualFrameDuration"))
            t_acq = acquisition_datetime(ds)
            if frame_ref and frame_ref > 0 and duration and duration > 0 and t_acq is not None:
                candidates.append((t_acq, frame_ref, duration))
        if not candidates:
            return None
        t_acq, frame_ref, duration = min(candidates)  # the earliest image, as rule 4 uses
        t_ave = K.frame_average_time(half_life, duration / 1000.0)
        return t_acq + _dt.timedelta(seconds=t_ave - frame_ref / 1000.0)

    rules = {"series_time": series_time, "ge_private": ge_private, "frame_backcompute": frame_backcompute,
             "earliest_acquisition": lambda: earliest}
    order = list(REFERENCE_RULES)
    if always_backcompute:
        order.remove("frame_backcompute")
        order.insert(0, "frame_backcompute")
    for name in order:
        t = rules[name]()
        if t is not None:
            return t, name
    raise SuvError("SUV_MISSING_REFERENCE_TIME", "no decay reference time: SeriesDate/Time, GE (0009,100D), "
                   "FrameReferenceTime/ActualFrameDuration and AcquisitionDate/Time are all missing")
