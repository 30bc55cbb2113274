"""ROC, AUC, Youden and DeLong against sklearn and a brute-force O(n^2) DeLong."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn import metrics

from petcohort.engine.errors import StatsError
from petcohort.engine.stats.roc import auc_ci, delong_test, roc_auc, roc_curve, youden_cutoff


def _data(seed, n=40, ties=False):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.4
    y[:2] = [True, False]
    a = rng.normal(size=n) + 1.0 * y
    b = a + rng.normal(size=n)
    if ties:
        a, b = np.round(a), np.round(b)
    return y, a, b


def _brute_delong(y, scores):
    """DeLong (1988) with the explicit kernel psi(X, Y) = 1, 1/2, 0, O(m n) per score."""
    v10s, v01s, aucs = [], [], []
    for s in scores:
        pos, neg = s[y], s[~y]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        aucs.append(psi.mean())
        v10s.append(psi.mean(axis=1))
        v01s.append(psi.mean(axis=0))
    m, n = y.sum(), (~y).sum()
    s = np.cov(np.array(v10s)) / m + np.cov(np.array(v01s)) / n
    return np.array(aucs), np.atleast_2d(s)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_curve_and_auc_match_sklearn(seed, ties):
    y, a, _ = _data(seed, ties=ties)
    curve = roc_curve(y, a)
    fpr, tpr, thr = metrics.roc_curve(y, a, drop_intermediate=False)
    np.testing.assert_allclose(curve.fpr, fpr)
    np.testing.assert_allclose(curve.tpr, tpr)
    np.testing.assert_allclose(curve.thresholds[1:], thr[1:])
    assert np.isinf(curve.thresholds[0])
    assert roc_auc(y, a) == pytest.approx(metrics.roc_auc_score(y, a), abs=1e-12)


def test_auc_hand_ties_count_half():
    # positives 2, 1 ; negatives 1, 0 -> pairs (2>1, 2>0, 1=1, 1>0) = 3.5 / 4
    assert roc_auc([1, 1, 0, 0], [2, 1, 1, 0]) == 0.875
    assert roc_auc([1, 0, 1, 0], [3, 3, 3, 3]) == 0.5  # documented degenerate case


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(-50, 50)), min_size=4, max_size=30))
def test_auc_invariant_under_monotone_transform(rows):
    y = np.array([r[0] for r in rows])
    s = np.array([r[1] for r in rows], dtype=float)
    if y.all() or not y.any():
        return
    base = roc_auc(y, s)
    assert roc_auc(y, np.exp(s / 10.0)) == pytest.approx(base, abs=1e-12)
    assert roc_auc(y, 3 * s**3 + 7) == pytest.approx(base, abs=1e-12)
    assert roc_auc(y, -s) == pytest.approx(1 - base, abs=1e-12)


def test_youden_threshold_at_data_value():
    y = np.array([0, 0, 0, 1, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.35, 0.4, 0.6, 0.7, 0.9])
    res = youden_cutoff(y, s)
    # candidates: >= 0.6 gives sens 3/4, spec 1 (J .75); >= 0.35 gives 1, 3/4 (J .75): tie -> highest
    assert res.threshold == 0.6 and res.sensitivity == 0.75 and res.specificity == 1.0
    assert res.j == pytest.approx(0.75)
    assert res.threshold in s
    fpr, tpr, thr = metrics.roc_curve(y, s, drop_intermediate=False)
    assert res.j == pytest.approx(np.max(tpr - fpr))


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_delong_matches_brute_force(seed, ties):
    y, a, b = _data(seed, n=35, ties=ties)
    res = delong_test(y, a, b)
    aucs, s = _brute_delong(y, [a, b])
    assert (res.auc_a, res.auc_b) == pytest.approx(tuple(aucs), abs=1e-12)
    assert (res.var_a, res.var_b, res.cov) == pytest.approx((s[0, 0], s[1, 1], s[0, 1]), rel=1e-9)
    z = (aucs[0] - aucs[1]) / np.sqrt(s[0, 0] + s[1, 1] - 2 * s[0, 1])
    assert res.z == pytest.approx(z, rel=1e-9)
    assert res.p == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-9)
    flipped = delong_test(y, b, a)
    assert flipped.z == pytest.approx(-res.z, rel=1e-12) and flipped.p == pytest.approx(res.p)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000))
def test_delong_antisymmetric(seed):
    y, a, b = _data(seed, n=20, ties=seed % 2 == 0)
    try:
        res = delong_test(y, a, b)
    except StatsError as e:
        assert e.reason == "STATS_ZERO_VARIANCE"
        return
    assert delong_test(y, b, a).z == pytest.approx(-res.z, rel=1e-12, abs=1e-12)


def test_auc_ci_matches_brute_force_variance():
    y, a, _ = _data(11, n=50)
    res = auc_ci(y, a, level=0.9)
    aucs, s = _brute_delong(y, [a])
    assert res.auc == pytest.approx(aucs[0]) and res.var == pytest.approx(s[0, 0], rel=1e-9)
    half = stats.norm.ppf(0.95) * np.sqrt(s[0, 0])
    assert (res.ci_low, res.ci_high) == pytest.approx((aucs[0] - half, min(1.0, aucs[0] + half)))
    sep = auc_ci([0, 0, 1, 1], [1, 2, 3, 4])  # perfect separation: documented zero width
    assert (sep.auc, sep.ci_low, sep.ci_high, sep.var) == (1.0, 1.0, 1.0, 0.0)


def test_roc_bad_input():
    cases = [((([1, 1, 1], [1, 2, 3]),), "STATS_SINGLE_CLASS"), ((([1, 0, 1], [1, 2]),), "STATS_LENGTH_MISMATCH"),
             ((([1, 0, 2], [1, 2, 3]),), "STATS_BAD_LABELS"), ((([1, 0, 1], [np.nan, 2, 3]),), "STATS_NAN"),
             ((([1, 0, 1], [np.nan] * 3),), "STATS_ALL_NAN")]
    for (args,), reason in cases:
        with pytest.raises(StatsError) as e:
            roc_auc(*args)
        assert e.value.reason == reason
    with pytest.raises(StatsError) as e:
        roc_auc([1, 0, 1, 0], [np.nan, 2, 3, 4], nan_policy="omit")  # omitting leaves one negative: fine
        roc_auc([1, 0, 1, 0], [1, np.nan, 3, np.nan], nan_policy="omit")
    assert e.value.reason == "STATS_SINGLE_CLASS"
    with pytest.raises(StatsError) as e:
        delong_test([0, 0, 1, 1], [1, 2, 3, 4], [1, 2, 3, 4])
    assert e.value.reason == "STATS_ZERO_VARIANCE"
    with pytest.raises(StatsError) as e:
        auc_ci([0, 1, 0, 1], [1, 2, 3, 4], level=95)
    assert e.value.reason == "BAD_VALUE"
