"""Rank tests: Wilcoxon signed-rank (paired) and Mann-Whitney U (two groups).

Both tests are two-sided and give an exact p-value for small samples without
ties (the null distribution enumerated by dynamic programming), otherwise the
normal approximation with the tie-corrected variance. Sources: Wilcoxon
(1945); Mann & Whitney (1947); Hollander, Wolfe & Chicken, "Nonparametric
Statistical Methods", 3rd ed., sections 3.1 and 4.1 (tie correction).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special, stats

from petcohort.engine.errors import StatsError
from petcohort.engine.stats._input import check_policy, paired, single

__all__ = ["WilcoxonResult", "MannWhitneyResult", "wilcoxon_signed_rank", "mann_whitney",
           "EXACT_MAX_N"]

#: Largest sample size (pairs for Wilcoxon, n1 + n2 for Mann-Whitney) given an
#: exact p under ``method="auto"``; the null counts stay exact in float64.
EXACT_MAX_N = 50
_METHODS = ("auto", "exact", "approx")


@dataclass(frozen=True)
class WilcoxonResult:
    """Wilcoxon signed-rank test of ``x - y``.

    statistic : min(T+, T-), the smaller signed-rank sum.
    p : two-sided p-value.
    method : ``"exact"`` or ``"approx"`` (normal, tie-corrected, no continuity correction).
    n : pairs with a non-zero difference (zero differences are dropped, Wilcoxon's method).
    n_zero : pairs with a zero difference (dropped).
    """

    statistic: float
    p: float
    method: str
    n: int
    n_zero: int


@dataclass(frozen=True)
class MannWhitneyResult:
    """Mann-Whitney U test of ``a`` against ``b``.

    u : U of the first sample, ``R_a - n_a (n_a + 1) / 2`` (midranks for ties).
    p : two-sided p-value.
    method : ``"exact"`` or ``"approx"`` (normal, tie-corrected, continuity-corrected).
    n_a, n_b : sample sizes.
    """

    u: float
    p: float
    method: str
    n_a: int
    n_b: int


def _check_method(method: str) -> None:
    if method not in _METHODS:
        raise StatsError("BAD_VALUE", f"method={method!r} is not one of {_METHODS}")


def _tie_term(ranked_values: np.ndarray) -> float:
    """sum(t^3 - t) over groups of tied values."""
    _, counts = np.unique(ranked_values, return_counts=True)
    return float(np.sum(counts.astype(np.float64) ** 3 - counts))


def _signed_rank_counts(n: int) -> np.ndarray:
    """Number of subsets of {1..n} with each rank sum 0..n(n+1)/2 (null of T+)."""
    counts = np.zeros(n * (n + 1) // 2 + 1)
    counts[0] = 1.0
    for k in range(1, n + 1):
        counts[k:] = counts[k:] + counts[:-k].copy()
    return counts


def _u_counts(n_a: int, n_b: int) -> np.ndarray:
    """Number of orderings of n_a + n_b distinct values with each U = 0..n_a n_b (null of U)."""
    # f[i][j] = f[i-1][j] shifted by j (the i-th a-value above all j b-values) + f[i][j-1]
    prev = [np.ones(1) for _ in range(n_b + 1)]  # i = 0: U is 0 whatever j
    for i in range(1, n_a + 1):
        cur = [np.ones(1)]  # j = 0
        for j in range(1, n_b + 1):
            out = np.zeros(i * j + 1)
            out[j:j + prev[j].size] += prev[j]
            out[:cur[j - 1].size] += cur[j - 1]
            cur.append(out)
        prev = cur
    return prev[n_b]


def _two_sided_exact(counts: np.ndarray, observed: float) -> float:
    """Two-sided p of a symmetric discrete null: 2 * P(T <= min(t, max - t)), capped at 1."""
    total = counts.sum()
    lower = min(observed, counts.size - 1 - observed)
    tail = counts[: int(np.floor(lower + 1e-9)) + 1].sum() / total
    return float(min(1.0, 2.0 * tail))


def wilcoxon_signed_rank(x: Any, y: Any, *, nan_policy: str = "raise", method: str = "auto") -> WilcoxonResult:
    """Two-sided Wilcoxon signed-rank test of paired samples.

    Parameters
    ----------
    x, y : (n,) array-like, Series or DataArray
        Paired measurements (e.g. a biomarker from automatic and manual masks).
    nan_policy : {"raise", "omit"}
    method : {"auto", "exact", "approx"}
        ``"auto"``: exact when there are at most :data:`EXACT_MAX_N` non-zero
        differences, no tied absolute differences and no zero differences;
        otherwise the normal approximation (as :func:`scipy.stats.wilcoxon`).

    Raises
    ------
    StatsError
        ``STATS_TOO_FEW`` (< 3 pairs), ``STATS_ZERO_DIFFERENCES`` (every
        difference is zero: the test is undefined), ``STATS_EXACT_TIES``
        (exact asked for with ties or zeros), plus the input codes.
    """
    _check_method(method)
    a, b = paired(x, y, names=("x", "y"), nan_policy=nan_policy, min_n=3)
    d = a - b
    nonzero = d != 0
    n_zero = int((~nonzero).sum())
    d = d[nonzero]
    n = d.size
    if n == 0:
        raise StatsError("STATS_ZERO_DIFFERENCES", "x - y is zero for every pair; the signed-rank test is undefined")
    absd = np.abs(d)
    ranks = stats.rankdata(absd)
    t_plus = float(ranks[d > 0].sum())
    t_minus = n * (n + 1) / 2 - t_plus
    statistic = min(t_plus, t_minus)
    has_ties = np.unique(absd).size < n
    exact = method == "exact" or (method == "auto" and n <= EXACT_MAX_N and not has_ties and n_zero == 0)
    if exact:
        if has_ties or n_zero:
            raise StatsError("STATS_EXACT_TIES", "method='exact' needs no tied |x - y| and no zero differences")
        return WilcoxonResult(statistic, _two_sided_exact(_signed_rank_counts(n), t_plus), "exact", n, n_zero)
    mean = n * (n + 1) / 4.0
    var = n * (n + 1) * (2 * n + 1) / 24.0 - _tie_term(absd) / 48.0
    z = (t_plus - mean) / np.sqrt(var)
    return WilcoxonResult(statistic, float(min(1.0, 2.0 * stats.norm.sf(abs(z)))), "approx", n, n_zero)


def mann_whitney(a: Any, b: Any, *, nan_policy: str = "raise", method: str = "auto") -> MannWhitneyResult:
    """Two-sided Mann-Whitney U test of two independent samples.

    Parameters
    ----------
    a, b : (n_a,), (n_b,) array-like, Series or DataArray
    nan_policy : {"raise", "omit"}
        Applied to each sample separately.
    method : {"auto", "exact", "approx"}
        ``"auto"``: exact when ``n_a + n_b <= EXACT_MAX_N`` and no value is
        tied; otherwise the normal approximation with tie correction and a
        0.5 continuity correction (``use_continuity=True`` in scipy).

    Raises
    ------
    StatsError
        ``STATS_TOO_FEW`` (an empty sample, or fewer than 3 values in all),
        ``STATS_CONSTANT`` (every value equal: no ranking information),
        ``STATS_EXACT_TIES`` (exact asked for with ties), plus the input codes.
    """
    _check_method(method)
    check_policy(nan_policy)
    xa = single(a, name="a", nan_policy=nan_policy, min_n=1)
    xb = single(b, name="b", nan_policy=nan_policy, min_n=1)
    n_a, n_b = xa.size, xb.size
    if n_a + n_b < 3:
        raise StatsError("STATS_TOO_FEW", f"a/b: {n_a} + {n_b} values, need at least 3 in all")
    pooled = np.concatenate([xa, xb])
    if np.all(pooled == pooled[0]):
        raise StatsError("STATS_CONSTANT", "a and b hold one single value; the U test is undefined")
    ranks = stats.rankdata(pooled)
    u = float(ranks[:n_a].sum() - n_a * (n_a + 1) / 2.0)
    has_ties = np.unique(pooled).size < pooled.size
    exact = method == "exact" or (method == "auto" and n_a + n_b <= EXACT_MAX_N and not has_ties)
    if exact:
        if has_ties:
            raise StatsError("STATS_EXACT_TIES", "method='exact' needs no tied values in a and b")
        return MannWhitneyResult(u, _two_sided_exact(_u_counts(n_a, n_b), u), "exact", n_a, n_b)
    n = n_a + n_b
    mu = n_a * n_b / 2.0
    var = n_a * n_b / 12.0 * ((n + 1) - _tie_term(pooled) / (n * (n - 1)))
    # continuity correction towards the mean, as scipy.stats.mannwhitneyu(use_continuity=True)
    z = (abs(u - mu) - 0.5) / np.sqrt(var)
    p = 2.0 * special.ndtr(-z) if z > 0 else 1.0
    return MannWhitneyResult(u, float(min(1.0, p)), "approx", n_a, n_b)
