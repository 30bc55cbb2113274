"""Per-study response numbers: the relative change of a biomarker and the PERCIST responder label.

delta (%) = (FU - BL) / BL * 100 (docs/methods.md "Statistics"). Responders are
PERCIST CMR or PMR, non-responders SMD or PMD. Plain Python and numpy, so the
stages that need a delta (PERCIST) do not import the cohort statistics
(pandas, scipy.stats) of :mod:`petcohort.engine.stats.response`.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

__all__ = ["BIOMARKERS", "RESPONDER", "NON_RESPONDER", "Delta", "delta_percent", "study_deltas", "count_reasons",
           "responder_label"]

#: Study biomarkers (quantify study dict keys) whose change is analysed by default.
BIOMARKERS = ("sulpeak", "suvpeak", "suvmax", "suvmean", "mtv_ml", "tlg", "lesion_count", "pbi", "pli", "dmax_mm")
RESPONDER = frozenset({"CMR", "PMR"})
NON_RESPONDER = frozenset({"SMD", "PMD"})


@dataclass(frozen=True)
class Delta:
    """A relative change in percent, or None with a reason code.

    value : float or None, percent.
    reason : None, ``DELTA_MISSING`` (BL or FU missing) or
        ``DELTA_BASELINE_ZERO`` (BL == 0: the ratio is undefined).
    """

    value: float | None
    reason: str | None = None


def _number(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return None if np.isnan(f) else f


def delta_percent(bl: Any, fu: Any) -> Delta:
    """Relative change ``(fu - bl) / bl * 100`` of one biomarker, in percent.

    Parameters
    ----------
    bl, fu : float or None
        Baseline and follow-up values in the biomarker's unit; None or NaN
        means missing.

    Returns
    -------
    Delta
        ``Delta(None, "DELTA_MISSING")`` when either value is missing,
        ``Delta(None, "DELTA_BASELINE_ZERO")`` when ``bl == 0`` (also for
        ``fu == 0``: 0/0 is as undefined as x/0), never a division by zero.
    """
    b, f = _number(bl), _number(fu)
    if b is None or f is None:
        return Delta(None, "DELTA_MISSING")
    if b == 0.0:
        return Delta(None, "DELTA_BASELINE_ZERO")
    return Delta((f - b) / b * 100.0)


def study_deltas(bl: Mapping[str, Any], fu: Mapping[str, Any],
                 biomarkers: Iterable[str] = BIOMARKERS) -> dict[str, Delta]:
    """:func:`delta_percent` for every biomarker of two quantify study dicts (absent key = missing)."""
    return {name: delta_percent(bl.get(name), fu.get(name)) for name in biomarkers}


def count_reasons(deltas: Iterable[Mapping[str, Delta]]) -> dict[str, dict[str, int]]:
    """Count missing-delta reasons per biomarker: ``{biomarker: {reason: count}}``."""
    out: dict[str, Counter] = {}
    for row in deltas:
        for name, d in row.items():
            if d.reason is not None:
                out.setdefault(name, Counter())[d.reason] += 1
    return {k: dict(v) for k, v in out.items()}


def responder_label(category: str | None) -> bool | None:
    """True for PERCIST CMR/PMR, False for SMD/PMD, None when missing or unknown.

    The short forms CR/PR/SD/PD are accepted as synonyms.
    """
    if category is None:
        return None
    cat = str(category).upper()
    cat = {"CR": "CMR", "PR": "PMR", "SD": "SMD", "PD": "PMD"}.get(cat, cat)
    if cat in RESPONDER:
        return True
    if cat in NON_RESPONDER:
        return False
    return None
