"""Wilcoxon signed-rank and Mann-Whitney U against scipy, exact and approximate paths."""
import numpy as np
import pytest
from scipy import stats

from petcohort.engine.errors import StatsError
from petcohort.engine.stats.ranks import mann_whitney, wilcoxon_signed_rank


@pytest.mark.parametrize("seed", range(5))
def test_wilcoxon_exact_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=12), rng.normal(size=12) + 0.4
    res = wilcoxon_signed_rank(x, y)
    ref = stats.wilcoxon(x, y, method="exact")
    assert res.method == "exact"
    assert res.statistic == pytest.approx(ref.statistic)
    assert res.p == pytest.approx(ref.pvalue, rel=1e-10)


def test_wilcoxon_hand_exact():
    # d = 1, 2, 3 all positive: T+ = 6, P(T+ = 6) = 1/8, two-sided p = 1/4
    res = wilcoxon_signed_rank([2, 4, 6], [1, 2, 3])
    assert (res.statistic, res.p, res.n) == (0.0, 0.25, 3)


@pytest.mark.parametrize("seed", range(3))
def test_wilcoxon_approx_with_ties_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    x = np.round(rng.normal(size=40), 1)
    y = np.round(rng.normal(size=40) + 0.3, 1)
    res = wilcoxon_signed_rank(x, y)
    ref = stats.wilcoxon(x, y, method="approx", zero_method="wilcox", correction=False)
    assert res.method == "approx"
    assert res.statistic == pytest.approx(ref.statistic)
    assert res.p == pytest.approx(ref.pvalue, rel=1e-9)


def test_wilcoxon_large_n_uses_approx():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=80), rng.normal(size=80)
    res = wilcoxon_signed_rank(x, y)
    ref = stats.wilcoxon(x, y, method="approx")
    assert res.method == "approx" and res.p == pytest.approx(ref.pvalue, rel=1e-9)


def test_wilcoxon_bad_input():
    with pytest.raises(StatsError) as e:
        wilcoxon_signed_rank([1, 2], [1, 3])
    assert e.value.reason == "STATS_TOO_FEW"
    with pytest.raises(StatsError) as e:
        wilcoxon_signed_rank([1, 2, 3], [1, 2, 3])
    assert e.value.reason == "STATS_ZERO_DIFFERENCES"
    with pytest.raises(StatsError) as e:
        wilcoxon_signed_rank([1, 2, 3, 4], [1, 2, 3])
    assert e.value.reason == "STATS_LENGTH_MISMATCH"
    with pytest.raises(StatsError) as e:
        wilcoxon_signed_rank([1, 2, 3, 4], [0, 1, 1, 2], method="exact")
    assert e.value.reason == "STATS_EXACT_TIES"


@pytest.mark.parametrize("sizes", [(5, 7), (8, 8), (3, 12)])
def test_mann_whitney_exact_matches_scipy(sizes):
    rng = np.random.default_rng(sum(sizes))
    a, b = rng.normal(size=sizes[0]) + 0.5, rng.normal(size=sizes[1])
    res = mann_whitney(a, b)
    ref = stats.mannwhitneyu(a, b, method="exact")
    assert res.method == "exact"
    assert res.u == pytest.approx(ref.statistic)
    assert res.p == pytest.approx(ref.pvalue, rel=1e-10)


def test_mann_whitney_hand_exact():
    # all of a above b (2 vs 2): U = 4, P(U = 4) = 1/6, two-sided 1/3
    res = mann_whitney([3, 4], [1, 2])
    assert res.u == 4.0 and res.p == pytest.approx(1 / 3)


def test_mann_whitney_approx_ties_matches_scipy():
    rng = np.random.default_rng(3)
    a, b = np.round(rng.normal(size=30), 1), np.round(rng.normal(size=25) + 0.5, 1)
    res = mann_whitney(a, b)
    ref = stats.mannwhitneyu(a, b, method="asymptotic", use_continuity=True)
    assert res.method == "approx"
    assert res.u == pytest.approx(ref.statistic)
    assert res.p == pytest.approx(ref.pvalue, rel=1e-9)


def test_mann_whitney_nan_policy_and_errors():
    a, b = [1.0, np.nan, 3.0, 5.0], [2.0, 4.0]
    with pytest.raises(StatsError) as e:
        mann_whitney(a, b)
    assert e.value.reason == "STATS_NAN"
    res = mann_whitney(a, b, nan_policy="omit")
    assert res.n_a == 3 and res.u == pytest.approx(stats.mannwhitneyu([1, 3, 5], b).statistic)
    with pytest.raises(StatsError) as e:
        mann_whitney([np.nan, np.nan], b, nan_policy="omit")
    assert e.value.reason == "STATS_ALL_NAN"
    with pytest.raises(StatsError) as e:
        mann_whitney([1.0, 1.0], [1.0])
    assert e.value.reason == "STATS_CONSTANT"
    with pytest.raises(StatsError) as e:
        mann_whitney([1.0], [2.0])
    assert e.value.reason == "STATS_TOO_FEW"
    with pytest.raises(StatsError) as e:
        mann_whitney([1.0, 2.0], [3.0], nan_policy="drop")
    assert e.value.reason == "BAD_VALUE"
