"""Treatment response: delta biomarkers, PERCIST responder labels, Table 2.

The per-study parts (:class:`Delta`, :func:`delta_percent`, responder labels) are
:mod:`petcohort.engine.stats.delta` (no pandas/scipy: the PERCIST stage uses them
on workers); this module adds the cohort tables and re-exports them.

delta (%) = (FU - BL) / BL * 100 (docs/methods.md "Statistics"). Responders are
PERCIST CMR or PMR, non-responders SMD or PMD. Because a *decrease* of a
biomarker predicts response, ROC statistics use ``score = -delta`` with
"responder" as the positive class; the tables say so in a ``direction``
column, and the cutoff is reported back on the delta scale
(``responder predicted when delta <= cutoff_percent``).
"""
from __future__ import annotations

import itertools
from typing import Any, Iterable

import numpy as np
import pandas as pd

from petcohort.engine.errors import StatsError
from petcohort.engine.stats.delta import (BIOMARKERS, NON_RESPONDER, RESPONDER, Delta, count_reasons,
                                          delta_percent, responder_label, study_deltas)
from petcohort.engine.stats.ranks import mann_whitney
from petcohort.engine.stats.roc import auc_ci, delong_test, roc_auc, youden_cutoff

__all__ = ["BIOMARKERS", "RESPONDER", "NON_RESPONDER", "DIRECTION", "Delta", "delta_percent", "study_deltas",
           "count_reasons", "responder_label", "response_table", "pairwise_delong", "TABLE2_COLUMNS"]

DIRECTION = "decrease predicts response (score = -delta)"
TABLE2_COLUMNS = ["biomarker", "n", "n_missing", "n_responders", "n_non_responders", "auc", "auc_ci_low",
                  "auc_ci_high", "cutoff_percent", "sensitivity", "specificity", "mann_whitney_p",
                  "direction", "reason"]


def _labels(labels: Any, index: pd.Index) -> pd.Series:
    """Align labels to ``index`` as a float Series (1 responder, 0 non-responder, NaN unknown)."""
    if isinstance(labels, pd.Series):
        s = labels.reindex(index)
    else:
        arr = list(getattr(labels, "values", labels))
        if len(arr) != len(index):
            raise StatsError("STATS_LENGTH_MISMATCH", f"labels has {len(arr)} values but deltas has {len(index)} rows")
        s = pd.Series(arr, index=index, dtype=object)
    return s.map(lambda v: np.nan if v is None or (isinstance(v, float) and np.isnan(v)) else float(bool(v)))


def _row(name: str, delta: pd.Series, y: pd.Series, level: float) -> dict[str, Any]:
    labelled = y.notna()
    d = pd.to_numeric(delta, errors="coerce").astype(float)
    ok = labelled & d.notna()
    yy, dd = y[ok].to_numpy().astype(bool), d[ok].to_numpy()
    row: dict[str, Any] = {c: None for c in TABLE2_COLUMNS}
    row.update(biomarker=name, n=int(ok.sum()), n_missing=int((labelled & d.isna()).sum()),
               n_responders=int(yy.sum()), n_non_responders=int((~yy).sum()), direction=DIRECTION)
    try:
        if yy.size < 3:
            raise StatsError("STATS_TOO_FEW", f"{name}: {yy.size} labelled deltas, need at least 3")
        ci = auc_ci(yy, -dd, level=level)
        cut = youden_cutoff(yy, -dd)
        row.update(auc=ci.auc, auc_ci_low=ci.ci_low, auc_ci_high=ci.ci_high, cutoff_percent=-cut.threshold,
                   sensitivity=cut.sensitivity, specificity=cut.specificity)
        row["mann_whitney_p"] = mann_whitney(dd[yy], dd[~yy]).p
    except StatsError as exc:
        row["reason"] = exc.reason
    return row


def response_table(deltas: pd.DataFrame, labels: Any, *, biomarkers: Iterable[str] | None = None,
                   level: float = 0.95) -> pd.DataFrame:
    """Paper Table 2: how well each delta biomarker separates responders.

    Parameters
    ----------
    deltas : DataFrame, one row per follow-up study, one column per biomarker
        Delta in percent; None/NaN = missing (counted in ``n_missing``).
    labels : Series aligned on ``deltas.index`` or a sequence of the same length
        True = responder (PERCIST CMR/PMR), False = non-responder, None = unknown
        (the row is left out of every count).
    biomarkers : columns to analyse (default: every column of ``deltas``).
    level : confidence level of the DeLong AUC interval.

    Returns
    -------
    DataFrame with columns :data:`TABLE2_COLUMNS`, one row per biomarker.
    ``auc`` is for ``score = -delta`` (a decrease predicts response);
    ``cutoff_percent`` is the Youden cutoff on the delta scale, placed at an
    observed delta: responder predicted when ``delta <= cutoff_percent``.
    ``mann_whitney_p`` compares the deltas of responders and non-responders.
    A biomarker whose statistics cannot be computed keeps its counts, has
    None statistics and the StatsError reason code in ``reason``.
    """
    y = _labels(labels, deltas.index)
    names = list(deltas.columns if biomarkers is None else biomarkers)
    rows = [_row(name, deltas[name] if name in deltas else pd.Series(np.nan, index=deltas.index), y, level)
            for name in names]
    return pd.DataFrame(rows, columns=TABLE2_COLUMNS)


def pairwise_delong(deltas: pd.DataFrame, labels: Any, *, biomarkers: Iterable[str] | None = None) -> pd.DataFrame:
    """DeLong test for every pair of delta biomarkers (score = -delta for each).

    Each pair uses the studies where both deltas and the label are present.

    Returns
    -------
    DataFrame with columns ``biomarker_a, biomarker_b, n, auc_a, auc_b, z, p,
    reason`` (z and p None and a reason code when the test is undefined; with
    ``STATS_ZERO_VARIANCE`` the two AUCs are still given).
    """
    y = _labels(labels, deltas.index)
    names = list(deltas.columns if biomarkers is None else biomarkers)
    cols = ["biomarker_a", "biomarker_b", "n", "auc_a", "auc_b", "z", "p", "reason"]
    rows = []
    for a, b in itertools.combinations(names, 2):
        da = pd.to_numeric(deltas[a], errors="coerce").astype(float)
        db = pd.to_numeric(deltas[b], errors="coerce").astype(float)
        ok = y.notna() & da.notna() & db.notna()
        row: dict[str, Any] = dict.fromkeys(cols)
        row.update(biomarker_a=a, biomarker_b=b, n=int(ok.sum()))
        try:
            if row["n"] < 3:
                raise StatsError("STATS_TOO_FEW", f"{a}/{b}: {row['n']} complete cases, need at least 3")
            res = delong_test(y[ok].to_numpy().astype(bool), -da[ok].to_numpy(), -db[ok].to_numpy())
            row.update(auc_a=res.auc_a, auc_b=res.auc_b, z=res.z, p=res.p)
        except StatsError as exc:
            row["reason"] = exc.reason
            if exc.reason == "STATS_ZERO_VARIANCE":  # the AUCs themselves are still defined
                yy = y[ok].to_numpy().astype(bool)
                row.update(auc_a=roc_auc(yy, -da[ok].to_numpy()), auc_b=roc_auc(yy, -db[ok].to_numpy()))
        rows.append(row)
    return pd.DataFrame(rows, columns=cols)
