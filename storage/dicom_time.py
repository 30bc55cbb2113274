"""DICOM date/time (DA, TM, DT) parsing into naive ``datetime`` objects.

Full date-times are used everywhere so that midnight crossings come out right
(DICOM PS3.5 section 6.2 value representations). Time-zone offsets in DT
values are dropped: every time of a series is local scanner time.
"""
from __future__ import annotations

import datetime as _dt
from typing import Any

from pydicom.valuerep import DA, DT, TM

__all__ = ["parse_date", "parse_time", "parse_datetime", "combine", "format_da", "format_tm", "format_dt"]


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    text = str(value).strip().rstrip("\x00").strip()
    return text or None


def parse_date(value: Any) -> _dt.date | None:
    """DA ``YYYYMMDD`` (or the old ``YYYY.MM.DD``) -> date; None when empty or unparsable."""
    text = _text(value)
    if text is None:
        return None
    try:
        parsed = DA(text.replace(".", ""))
    except (ValueError, TypeError):
        return None
    return None if parsed is None else _dt.date(parsed.year, parsed.month, parsed.day)


def parse_time(value: Any) -> _dt.time | None:
    """TM ``HHMMSS.FFFFFF`` (or the old ``HH:MM:SS``) -> time; None when empty or unparsable."""
    text = _text(value)
    if text is None:
        return None
    try:
        parsed = TM(text.replace(":", ""))
    except (ValueError, TypeError):
        return None
    if parsed is None:
        return None
    return _dt.time(parsed.hour, parsed.minute, parsed.second, parsed.microsecond)


def parse_datetime(value: Any) -> _dt.datetime | None:
    """DT ``YYYYMMDDHHMMSS.FFFFFF[&ZZXX]`` -> naive datetime; None when empty or unparsable."""
    text = _text(value)
    if text is None:
        return None
    try:
        parsed = DT(text)
    except (ValueError, TypeError):
        return None
    if parsed is None:
        return None
    return _dt.datetime(parsed.year, parsed.month, parsed.day, parsed.hour, parsed.minute,
                        parsed.second, parsed.microsecond)


def combine(date: Any, time: Any) -> _dt.datetime | None:
    """DA + TM -> datetime, or None when either is missing."""
    d, t = parse_date(date), parse_time(time)
    if d is None or t is None:
        return None
    return _dt.datetime.combine(d, t)


def format_da(value: _dt.datetime | _dt.date) -> str:
    return value.strftime("%Y%m%d")


def format_tm(value: _dt.datetime | _dt.time) -> str:
    return value.strftime("%H%M%S.%f")


def format_dt(value: _dt.datetime) -> str:
    return value.strftime("%Y%m%d%H%M%S.%f")
