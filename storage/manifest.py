"""The manifest: status of every study x stage, derived only from the stage records.

Nothing else is consulted (no array listing, no run logs), so the manifest is
exactly what the commit protocol vouches for: a (study, stage) without a
record is "not committed" and is simply absent from the frame.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from petcohort.storage.keys import split_study_key

if TYPE_CHECKING:
    from petcohort.storage.store import CohortStore

__all__ = ["MANIFEST_COLUMNS", "WHY_COLUMNS", "manifest_frame", "manifest_summary", "why_frame"]

MANIFEST_COLUMNS = ("study", "patient", "timepoint", "stage", "status", "reason", "message",
                    "input_hash", "config_hash", "code_version", "seconds", "started", "code_hash", "run")
#: Columns of :func:`why_frame` (``petcohort manifest --why``).
WHY_COLUMNS = ("study", "patient", "timepoint", "stage", "why")


def manifest_frame(store: "CohortStore") -> pd.DataFrame:
    """One row per stage record, sorted by study then stage.

    Parameters
    ----------
    store : CohortStore
        Store to read (mode ``r`` is enough).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`MANIFEST_COLUMNS`. ``patient`` and ``timepoint`` are
        parsed from the study key (``P-3fa81c02d9-T1`` -> ``P-3fa81c02d9``,
        1; None for keys of another form); ``seconds`` is wall time of the
        stage in s; ``started`` an ISO 8601 time string; ``code_hash`` the
        record's code fingerprint digest (None in records of earlier
        versions); ``run`` the token of the run that wrote it.
    """
    rows = []
    for (key, stage), rec in store.stage_records().items():
        patient, timepoint = split_study_key(key)
        row = {"study": key, "patient": patient, "timepoint": timepoint, "stage": stage}
        for col in MANIFEST_COLUMNS[4:]:
            row[col] = rec.get(col)
        row["code_hash"] = (rec.get("code") or {}).get("digest") if isinstance(rec.get("code"), dict) else None
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    frame["timepoint"] = frame["timepoint"].astype("Int64")
    frame["seconds"] = pd.to_numeric(frame["seconds"], errors="coerce")
    return frame.sort_values(["study", "stage"], kind="stable").reset_index(drop=True)


def manifest_summary(store: "CohortStore") -> pd.DataFrame:
    """Counts of records per stage (rows) and status (columns ``committed``, ``failed``, ...).

    Returns
    -------
    pandas.DataFrame
        Integer counts, index ``stage``, one column per status seen (at least
        ``committed`` and ``failed``), plus ``total``.
    """
    frame = manifest_frame(store)
    counts = pd.crosstab(frame["stage"], frame["status"]) if len(frame) else pd.DataFrame()
    for status in ("committed", "failed"):
        if status not in counts.columns:
            counts[status] = 0
    counts = counts.astype(int)
    counts["total"] = counts.sum(axis=1)
    counts.index.name = "stage"
    counts.columns.name = None
    return counts


def why_frame(rows: list[dict]) -> pd.DataFrame:
    """The stale study-stages (``[{"study", "stage", "why": [str, ...]}]``) as a frame, reasons joined by "; ".

    Returns
    -------
    pandas.DataFrame
        Columns :data:`WHY_COLUMNS`, in the order given.
    """
    out = []
    for r in rows:
        patient, timepoint = split_study_key(r["study"])
        out.append({"study": r["study"], "patient": patient, "timepoint": timepoint, "stage": r["stage"],
                    "why": "; ".join(r.get("why") or [])})
    frame = pd.DataFrame(out, columns=list(WHY_COLUMNS))
    frame["timepoint"] = frame["timepoint"].astype("Int64")
    return frame
