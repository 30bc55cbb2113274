"""What the live dashboard shows, computed from the store's stage records (no Bokeh here).

Pure functions of ``store.stage_records()`` and study attrs so that they are
testable without a server. Only pseudonymous study keys and reason codes are
ever put into the returned frames.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["Snapshot", "snapshot", "progress_frame", "throughput", "failures", "biomarker_values",
           "latest_qc", "BIOMARKERS"]

BIOMARKERS = ("sulpeak", "tlg", "pbi", "pli")
PROGRESS_COLUMNS = ["stage", "total", "committed", "failed", "pending", "percent"]


@dataclass
class Snapshot:
    """One poll of the store.

    Attributes
    ----------
    progress : DataFrame
        One row per stage: total applicable study-stages, committed, failed,
        pending, percent done (committed + failed).
    done, total : int
        Finished (committed or failed) and applicable study-stages, all stages.
    per_minute : float
        Commits per minute over the last ``window_min`` minutes.
    timeline : DataFrame
        Commit rate over time (see :func:`throughput`).
    failures : DataFrame
        study, stage, reason, message.
    biomarkers : dict of str -> dict of str -> ndarray
        biomarker -> {"manual": values, "automatic": values}.
    latest_qc : list of str
        Study keys with the most recently committed ``qc`` records (newest first).
    """

    progress: pd.DataFrame
    done: int
    total: int
    per_minute: float
    timeline: pd.DataFrame
    failures: pd.DataFrame
    biomarkers: dict = field(default_factory=dict)
    latest_qc: list = field(default_factory=list)


def _parse_time(value: Any) -> _dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        t = _dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc)


def _finished(rec: dict) -> _dt.datetime | None:
    """When a record was committed: ``started`` + ``seconds`` (both written by the runner)."""
    t = _parse_time(rec.get("started"))
    if t is None:
        return None
    try:
        return t + _dt.timedelta(seconds=float(rec.get("seconds") or 0.0))
    except (TypeError, ValueError):
        return t


def progress_frame(records: dict, applicable: dict[str, int]) -> pd.DataFrame:
    """Stage x status counts.

    Parameters
    ----------
    records : dict of (study, stage) -> record
    applicable : dict of stage -> number of studies the stage applies to
        Stages seen only in ``records`` are added with their record count.
    """
    stages = list(applicable) + sorted({s for _, s in records} - set(applicable))
    rows = []
    for stage in stages:
        statuses = [r.get("status") for (_, s), r in records.items() if s == stage]
        committed, failed = statuses.count("committed"), statuses.count("failed")
        total = max(int(applicable.get(stage, 0)), committed + failed)
        done = committed + failed
        rows.append({"stage": stage, "total": total, "committed": committed, "failed": failed,
                     "pending": total - done, "percent": round(100.0 * done / total, 1) if total else 0.0})
    return pd.DataFrame(rows, columns=PROGRESS_COLUMNS)


def throughput(records: dict, *, now: _dt.datetime | None = None, window_min: float = 5.0
               ) -> tuple[float, pd.DataFrame]:
    """Commits per minute over the last ``window_min`` minutes, and the commit-rate timeline.

    The timeline bins commits by finish time: 10 s bins while the run is
    younger than ``window_min`` (a one-minute bin would hide a short run), else
    1 min bins. Columns: ``minute`` (bin start, minutes since the first
    commit), ``width`` (bin width, minutes), ``commits`` (count), ``per_minute``.
    """
    cols = ["minute", "width", "commits", "per_minute"]
    times = sorted(t for r in records.values() if r.get("status") == "committed" and (t := _finished(r)))
    if not times:
        return 0.0, pd.DataFrame({c: [] for c in cols})
    now = now or _dt.datetime.now(_dt.timezone.utc)
    lo = now - _dt.timedelta(minutes=window_min)
    recent = sum(1 for t in times if t >= lo)
    # A run younger than the window is measured over its own age, not diluted by the empty part.
    span = min(window_min, max((now - times[0]).total_seconds() / 60.0, 1.0 / 60.0))
    seconds = np.array([(t - times[0]).total_seconds() for t in times])
    bin_s = 10.0 if seconds[-1] < window_min * 60.0 else 60.0
    counts = np.bincount(np.floor(seconds / bin_s).astype(int))
    timeline = pd.DataFrame({"minute": np.arange(counts.size) * bin_s / 60.0, "width": bin_s / 60.0,
                             "commits": counts.astype(float), "per_minute": counts * 60.0 / bin_s})
    return recent / span, timeline[cols]


def failures(records: dict) -> pd.DataFrame:
    """Failed study-stages with their reason codes (message cut to 200 characters)."""
    rows = [{"study": k, "stage": s, "reason": str(r.get("reason")), "message": str(r.get("message") or "")[:200]}
            for (k, s), r in sorted(records.items()) if r.get("status") == "failed"]
    return pd.DataFrame(rows, columns=["study", "stage", "reason", "message"])


def biomarker_values(records: dict) -> dict[str, dict[str, np.ndarray]]:
    """Study-level biomarkers from committed ``quantify`` summaries, manual vs automatic sources."""
    out = {b: {"manual": [], "automatic": []} for b in BIOMARKERS}
    for (_, stage), rec in records.items():
        if stage != "quantify" or rec.get("status") != "committed":
            continue
        sources = (rec.get("summary") or {}).get("sources") or {}
        for src, vals in sources.items():
            group = "manual" if src == "manual" else "automatic"
            for b in BIOMARKERS:
                v = (vals or {}).get(b)
                if isinstance(v, (int, float)) and np.isfinite(v):
                    out[b][group].append(float(v))
    return {b: {g: np.asarray(v, float) for g, v in d.items()} for b, d in out.items()}


def latest_qc(records: dict, n: int = 4) -> list[str]:
    """The ``n`` studies whose ``qc`` stage committed last (newest first; untimed records count as oldest)."""
    oldest = _dt.datetime.min.replace(tzinfo=_dt.timezone.utc)
    done = [(_finished(r) or oldest, k) for (k, s), r in records.items()
            if s == "qc" and r.get("status") == "committed"]
    return [k for _, k in sorted(done, reverse=True)[:n]]


def snapshot(records: dict, applicable: dict[str, int], *, now: _dt.datetime | None = None) -> Snapshot:
    """Everything the dashboard shows, from one read of the stage records."""
    prog = progress_frame(records, applicable)
    per_min, timeline = throughput(records, now=now)
    return Snapshot(progress=prog, done=int(prog["committed"].sum() + prog["failed"].sum()),
                    total=int(prog["total"].sum()), per_minute=per_min, timeline=timeline,
                    failures=failures(records), biomarkers=biomarker_values(records),
                    latest_qc=latest_qc(records))
