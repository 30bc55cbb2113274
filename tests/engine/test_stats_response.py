"""Delta biomarkers, responder labels and the Table 2 / pairwise DeLong frames."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn import metrics

from petcohort.engine.stats.response import (DIRECTION, TABLE2_COLUMNS, Delta, count_reasons, delta_percent,
                                             pairwise_delong, responder_label, response_table, study_deltas)
from petcohort.engine.stats.roc import delong_test


def test_delta_percent_values_and_reasons():
    assert delta_percent(4.0, 3.0) == Delta(-25.0)
    assert delta_percent(2.0, 5.0).value == pytest.approx(150.0)
    assert delta_percent(0.0, 3.0) == Delta(None, "DELTA_BASELINE_ZERO")
    assert delta_percent(0, 0) == Delta(None, "DELTA_BASELINE_ZERO")
    assert delta_percent(None, 3.0) == Delta(None, "DELTA_MISSING")
    assert delta_percent(2.0, float("nan")) == Delta(None, "DELTA_MISSING")


def test_study_deltas_and_counts():
    bl = {"sulpeak": 10.0, "tlg": 0.0, "mtv_ml": None}
    fu = {"sulpeak": 5.0, "tlg": 3.0, "mtv_ml": 1.0}
    d = study_deltas(bl, fu, ["sulpeak", "tlg", "mtv_ml", "pbi"])
    assert d["sulpeak"].value == -50.0
    counts = count_reasons([d, study_deltas(bl, fu, ["tlg"])])
    assert counts == {"tlg": {"DELTA_BASELINE_ZERO": 2}, "mtv_ml": {"DELTA_MISSING": 1}, "pbi": {"DELTA_MISSING": 1}}


def test_responder_label():
    assert [responder_label(c) for c in ["CMR", "PMR", "SMD", "PMD", "pr", "SD", None, "??"]] == \
        [True, True, False, False, True, False, None, None]


def _cohort(seed=0, n=30):
    rng = np.random.default_rng(seed)
    y = np.r_[[True, False], rng.random(n - 2) < 0.5]
    sul = np.where(y, -45, 5) + rng.normal(0, 25, n)
    tlg = np.where(y, -30, 10) + rng.normal(0, 40, n)
    idx = [f"P-{i:010x}-T1" for i in range(n)]
    return pd.DataFrame({"sulpeak": sul, "tlg": tlg}, index=idx), pd.Series(y, index=idx)


def test_response_table_matches_references():
    deltas, y = _cohort()
    deltas.iloc[3, 1] = np.nan
    labels = y.astype(object)
    labels.iloc[5] = None  # unknown label: out of every count
    table = response_table(deltas, labels)
    assert list(table.columns) == TABLE2_COLUMNS and list(table.biomarker) == ["sulpeak", "tlg"]
    row = table.set_index("biomarker").loc["tlg"]
    keep = labels.notna() & deltas.tlg.notna()
    yy, dd = y[keep].to_numpy(), deltas.tlg[keep].to_numpy()
    assert row.n == keep.sum() and row.n_missing == 1 and row.n_responders == yy.sum()
    assert row.auc == pytest.approx(metrics.roc_auc_score(yy, -dd))
    assert row.auc > 0.5 and row.auc_ci_low < row.auc < row.auc_ci_high
    assert row.direction == DIRECTION and pd.isna(row.reason)
    # cutoff on the delta scale: predicted responder when delta <= cutoff
    pred = dd <= row.cutoff_percent
    assert row.sensitivity == pytest.approx(pred[yy].mean())
    assert row.specificity == pytest.approx((~pred[~yy]).mean())
    fpr, tpr, _ = metrics.roc_curve(yy, -dd)
    assert row.sensitivity + row.specificity - 1 == pytest.approx(np.max(tpr - fpr))
    assert row.cutoff_percent in dd
    assert row.mann_whitney_p == pytest.approx(stats.mannwhitneyu(dd[yy], dd[~yy], method="exact").pvalue, rel=1e-9)


def test_response_table_degenerate_rows_have_reasons():
    deltas, y = _cohort(n=6)
    deltas["pbi"] = np.nan
    table = response_table(deltas, pd.Series(False, index=y.index), biomarkers=["sulpeak", "tlg"])
    assert set(table.reason) == {"STATS_SINGLE_CLASS"}  # every label False
    table = response_table(deltas, y, biomarkers=["sulpeak", "pbi", "absent"])
    r = table.set_index("biomarker")
    assert pd.isna(r.loc["sulpeak", "reason"])
    assert r.loc["pbi", "reason"] == "STATS_TOO_FEW" and r.loc["pbi", "n_missing"] == 6
    assert r.loc["absent", "reason"] == "STATS_TOO_FEW"


def test_pairwise_delong():
    deltas, y = _cohort(seed=2, n=40)
    deltas["mtv_ml"] = deltas["tlg"]
    out = pairwise_delong(deltas, y)
    assert list(zip(out.biomarker_a, out.biomarker_b)) == [("sulpeak", "tlg"), ("sulpeak", "mtv_ml"), ("tlg", "mtv_ml")]
    ref = delong_test(y, -deltas.sulpeak, -deltas.tlg)
    assert out.loc[0, "z"] == pytest.approx(ref.z) and out.loc[0, "n"] == 40
    assert out.loc[2, "reason"] == "STATS_ZERO_VARIANCE" and pd.isna(out.loc[2, "z"])
    assert out.loc[2, "auc_a"] == out.loc[2, "auc_b"] == pytest.approx(ref.auc_b)
    few = pairwise_delong(deltas.iloc[:2], y.iloc[:2], biomarkers=["sulpeak", "tlg"])
    assert few.loc[0, "reason"] == "STATS_TOO_FEW" and few.loc[0, "n"] == 2
