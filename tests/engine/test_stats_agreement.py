"""Lin's CCC (hand-worked), Spearman and KS normality against scipy, input policy."""
import math

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from petcohort.engine.errors import StatsError
from petcohort.engine.stats.agreement import ks_normality, lins_ccc, spearman


def test_ccc_hand_worked():
    # x = 1,2,3,4 ; y = 2,2,4,4. Population moments: mean_x 2.5, mean_y 3,
    # s_xx = 5/4, s_yy = 1, s_xy = 1 -> ccc = 2 / (5/4 + 1 + 1/4) = 0.8
    # r = 1/sqrt(5/4), u^2 = (1/4)/sqrt(5/4), Lin (1989/2000) var(z) with n - 2 = 2:
    r2, ccc, u2 = 0.8, 0.8, 0.25 / math.sqrt(1.25)
    r = math.sqrt(r2)
    var_z = ((1 - r2) * ccc**2 / ((1 - ccc**2) * r2)
             + 2 * ccc**3 * (1 - ccc) * u2 / (r * (1 - ccc**2) ** 2)
             - ccc**4 * u2**2 / (2 * r2 * (1 - ccc**2) ** 2)) / 2
    assert var_z == pytest.approx(0.370370, abs=1e-6)  # 4/9 + 32/81 - 8/81 by hand
    half = 1.959963984540054 * math.sqrt(var_z)
    res = lins_ccc([1, 2, 3, 4], [2, 2, 4, 4])
    assert res.ccc == pytest.approx(0.8, abs=1e-12)
    assert res.ci_low == pytest.approx(math.tanh(math.atanh(0.8) - half), abs=1e-9)
    assert res.ci_high == pytest.approx(math.tanh(math.atanh(0.8) + half), abs=1e-9)
    assert res.n == 4


def test_ccc_accepts_series_and_dataarray():
    x, y = np.array([1.0, 2.0, 3.5, 4.0, 6.0]), np.array([1.2, 2.1, 3.0, 4.4, 5.5])
    ref = lins_ccc(x, y)
    assert lins_ccc(pd.Series(x), pd.Series(y, index=list("abcde"))) == ref
    assert lins_ccc(xr.DataArray(x, dims="study"), xr.DataArray(y, dims="study")) == ref


def test_ccc_identical_is_one_with_degenerate_ci():
    res = lins_ccc([1.0, 2.0, 5.0], [1.0, 2.0, 5.0])
    assert (res.ccc, res.ci_low, res.ci_high) == (1.0, 1.0, 1.0)


finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(finite, finite), min_size=3, max_size=20))
def test_ccc_properties(pairs):
    x, y = np.array(pairs).T
    if np.ptp(x) < 1e-3 or np.ptp(y) < 1e-3:
        return
    a, b = lins_ccc(x, y), lins_ccc(y, x)
    assert a.ccc == pytest.approx(b.ccc, abs=1e-12)  # symmetric
    assert -1 <= a.ci_low <= a.ccc <= a.ci_high <= 1
    # identity: 1 - ccc = E(x - y)^2 / (s_xx + s_yy + (mx - my)^2), so ccc == 1 iff x == y
    denom = x.var() + y.var() + (x.mean() - y.mean()) ** 2
    assert 1 - a.ccc == pytest.approx(np.mean((x - y) ** 2) / denom, abs=1e-9)
    if np.mean((x - y) ** 2) / denom > 1e-12:  # differences above float resolution
        assert a.ccc < 1.0
    assert lins_ccc(x, x).ccc == 1.0


def test_ccc_errors():
    cases = [(([1, 2, 3], [1, 2]), "STATS_LENGTH_MISMATCH"), (([1, 2], [1, 3]), "STATS_TOO_FEW"),
             (([1, 1, 1], [1, 2, 3]), "STATS_CONSTANT"), (([np.nan] * 3, [1, 2, 3]), "STATS_ALL_NAN"),
             (([1, np.nan, 3, 4], [1, 2, 3, 5]), "STATS_NAN"), ((["a", "b", "c"], [1, 2, 3]), "BAD_TYPE"),
             ((["1", "2", "3"], [1, 2, 3]), "BAD_TYPE"),
             (([1, np.inf, 3], [1, 2, 3]), "STATS_BAD_INPUT")]
    for args, reason in cases:
        with pytest.raises(StatsError) as e:
            lins_ccc(*args)
        assert e.value.reason == reason, args
    nullable = pd.Series([1, None, 3, 4, 6], dtype="Float64")  # pd.NA is missing too
    assert lins_ccc(nullable, [1, 2, 3, 5, 5], nan_policy="omit") == lins_ccc([1, 3, 4, 6], [1, 3, 5, 5])
    res = lins_ccc([1, None, 3, 4, 6], [1, 2, 3, 5, 5], nan_policy="omit")
    assert res.n == 4 and res == lins_ccc([1, 3, 4, 6], [1, 3, 5, 5])


@pytest.mark.parametrize("seed", range(4))
def test_spearman_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    x = np.round(rng.normal(size=15), 1)
    y = x + np.round(rng.normal(size=15), 1)
    res, ref = spearman(x, y), stats.spearmanr(x, y)
    assert res.rho == pytest.approx(ref.statistic, abs=1e-12)
    assert res.p == pytest.approx(ref.pvalue, rel=1e-9)


def test_spearman_errors_and_perfect():
    assert spearman([1, 2, 3], [2, 4, 9]).p == 0.0
    with pytest.raises(StatsError) as e:
        spearman([1, 2, 3], [5, 5, 5])
    assert e.value.reason == "STATS_CONSTANT"


@pytest.mark.parametrize("seed", range(4))
def test_ks_matches_scipy_with_estimated_parameters(seed):
    x = np.random.default_rng(seed).gamma(2.0, size=25)
    res = ks_normality(x)
    ref = stats.kstest(x, "norm", args=(x.mean(), x.std(ddof=1)), method="exact")
    assert res.statistic == pytest.approx(ref.statistic, abs=1e-12)
    assert res.p == pytest.approx(ref.pvalue, rel=1e-8)
    assert res.sd == pytest.approx(x.std(ddof=1))


def test_ks_errors():
    with pytest.raises(StatsError) as e:
        ks_normality([2.0, 2.0, 2.0])
    assert e.value.reason == "STATS_CONSTANT"
    with pytest.raises(StatsError) as e:
        ks_normality([np.nan, 1.0, 2.0, 3.0])
    assert e.value.reason == "STATS_NAN"
