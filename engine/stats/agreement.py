"""Agreement of a biomarker between two measurement methods (paper, section 2.4).

Lin's concordance correlation coefficient with its Fisher-z confidence
interval, Spearman's rho, the Wilcoxon signed-rank test (re-exported from
:mod:`.ranks`) and a Kolmogorov-Smirnov normality test.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from petcohort.engine.errors import StatsError
from petcohort.engine.stats._input import paired, single
from petcohort.engine.stats.ranks import WilcoxonResult, wilcoxon_signed_rank

__all__ = ["CccResult", "SpearmanResult", "KsResult", "WilcoxonResult", "lins_ccc", "spearman",
           "wilcoxon_signed_rank", "ks_normality"]


@dataclass(frozen=True)
class CccResult:
    """Lin's concordance correlation coefficient and its confidence interval (unitless)."""

    ccc: float
    ci_low: float
    ci_high: float
    n: int


@dataclass(frozen=True)
class SpearmanResult:
    """Spearman's rank correlation and its two-sided p-value (t approximation, n - 2 df)."""

    rho: float
    p: float
    n: int


@dataclass(frozen=True)
class KsResult:
    """One-sample KS test against a normal with the sample's mean and SD.

    statistic : sup |F_n - Phi((x - mean) / sd)|.
    p : from the exact one-sample KS distribution with *known* parameters,
        i.e. without the Lilliefors correction; because the parameters are
        estimated from the same data this p is conservative (too large).
    mean, sd : the fitted parameters (``sd`` with ``ddof=1``).
    """

    statistic: float
    p: float
    mean: float
    sd: float
    n: int


def lins_ccc(x: Any, y: Any, *, nan_policy: str = "raise", level: float = 0.95) -> CccResult:
    """Lin's concordance correlation coefficient with a Fisher-z confidence interval.

    ``ccc = 2 s_xy / (s_x^2 + s_y^2 + (mean_x - mean_y)^2)`` with population
    (divide by ``n``) moments, Lin (1989), Biometrics 45:255-268, eq. 2a.
    The interval is ``tanh(z +- q * se)``, ``z = atanh(ccc)``, with Lin's
    asymptotic variance of ``z`` (Lin 1989, eq. 8, as corrected in Lin (2000),
    Biometrics 56:324-325)::

        var(z) = 1 / (n - 2) * [ (1 - r^2) ccc^2 / ((1 - ccc^2) r^2)
                                 + 2 ccc^3 (1 - ccc) u^2 / (r (1 - ccc^2)^2)
                                 - ccc^4 u^4 / (2 r^2 (1 - ccc^2)^2) ]

    where ``r`` is Pearson's correlation and ``u = (mean_x - mean_y) /
    sqrt(s_x s_y)``. It is evaluated with ``ccc / r = C_b = 2 s_x s_y / (s_x^2
    + s_y^2 + (mean_x - mean_y)^2)`` so that ``r = 0`` needs no division by zero.

    Parameters
    ----------
    x, y : (n,) array-like, Series or DataArray
        Paired measurements, same unit (e.g. SULpeak from automatic and
        manual masks).
    nan_policy : {"raise", "omit"}
    level : float
        Confidence level of the interval, in (0, 1).

    Returns
    -------
    CccResult
        Degenerate, documented case: ``ccc == 1`` (identical vectors) gives
        ``ci_low == ci_high == 1``.

    Raises
    ------
    StatsError
        ``STATS_TOO_FEW`` (< 3 pairs), ``STATS_CONSTANT`` (x or y constant:
        the interval is undefined), ``BAD_VALUE``, plus the input codes.
    """
    if not 0.0 < level < 1.0:
        raise StatsError("BAD_VALUE", f"level={level!r}; expected a number in (0, 1)")
    a, b = paired(x, y, names=("x", "y"), nan_policy=nan_policy, min_n=3)
    n = a.size
    mx, my = a.mean(), b.mean()
    sxx, syy = np.mean((a - mx) ** 2), np.mean((b - my) ** 2)
    sxy = np.mean((a - mx) * (b - my))
    if sxx == 0.0 or syy == 0.0:
        raise StatsError("STATS_CONSTANT", f"{'x' if sxx == 0 else 'y'} is constant; the CCC interval is undefined")
    denom = sxx + syy + (mx - my) ** 2
    ccc = float(2.0 * sxy / denom)
    ccc = float(np.clip(ccc, -1.0, 1.0))
    if np.array_equal(a, b) or abs(ccc) == 1.0:
        # Identical vectors, or differences below float resolution: the
        # Fisher-z interval is degenerate (z = +-inf); report [ccc, ccc].
        return CccResult(ccc, ccc, ccc, n)
    sx, sy = np.sqrt(sxx), np.sqrt(syy)
    r = sxy / (sx * sy)
    cb = 2.0 * sx * sy / denom
    u = (mx - my) / np.sqrt(sx * sy)
    one_m = 1.0 - ccc ** 2
    var_z = ((1.0 - r ** 2) * cb ** 2 / one_m
             + 2.0 * ccc ** 2 * cb * (1.0 - ccc) * u ** 2 / one_m ** 2
             - ccc ** 2 * cb ** 2 * u ** 4 / (2.0 * one_m ** 2)) / (n - 2)
    z = np.arctanh(ccc)
    half = stats.norm.ppf(0.5 + level / 2.0) * np.sqrt(max(var_z, 0.0))
    return CccResult(ccc, float(np.tanh(z - half)), float(np.tanh(z + half)), n)


def spearman(x: Any, y: Any, *, nan_policy: str = "raise") -> SpearmanResult:
    """Spearman's rho (Pearson correlation of midranks) with a two-sided p.

    The p-value uses ``t = rho sqrt((n - 2) / (1 - rho^2))`` with ``n - 2``
    degrees of freedom (as :func:`scipy.stats.spearmanr`); ``|rho| == 1``
    gives ``p == 0``.

    Raises
    ------
    StatsError
        ``STATS_TOO_FEW`` (< 3 pairs), ``STATS_CONSTANT`` (x or y constant:
        rho is undefined), plus the input codes.
    """
    a, b = paired(x, y, names=("x", "y"), nan_policy=nan_policy, min_n=3)
    if np.all(a == a[0]) or np.all(b == b[0]):
        raise StatsError("STATS_CONSTANT", "x or y is constant; Spearman's rho is undefined")
    ra, rb = stats.rankdata(a), stats.rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    rho = float(np.clip(np.sum(ra * rb) / np.sqrt(np.sum(ra ** 2) * np.sum(rb ** 2)), -1.0, 1.0))
    n = a.size
    if abs(rho) == 1.0:
        return SpearmanResult(rho, 0.0, n)
    t = rho * np.sqrt((n - 2) / (1.0 - rho ** 2))
    return SpearmanResult(rho, float(2.0 * stats.t.sf(abs(t), n - 2)), n)


def ks_normality(x: Any, *, nan_policy: str = "raise") -> KsResult:
    """Kolmogorov-Smirnov test of ``x`` against a normal with estimated mean and SD.

    No Lilliefors correction: the p-value is the one-sample KS p for a fully
    specified normal (exact distribution, :data:`scipy.stats.kstwo`), the test
    the paper reports; it is conservative because mean and SD (``ddof=1``)
    come from the data.

    Raises
    ------
    StatsError
        ``STATS_TOO_FEW`` (< 3 values), ``STATS_CONSTANT`` (SD = 0), plus the
        input codes.
    """
    a = np.sort(single(x, name="x", nan_policy=nan_policy, min_n=3))
    n = a.size
    mean, sd = float(a.mean()), float(a.std(ddof=1))
    if sd == 0.0:
        raise StatsError("STATS_CONSTANT", "x is constant; a normal with SD 0 cannot be fitted")
    cdf = stats.norm.cdf((a - mean) / sd)
    d_plus = np.max(np.arange(1, n + 1) / n - cdf)
    d_minus = np.max(cdf - np.arange(0, n) / n)
    d = float(max(d_plus, d_minus))
    return KsResult(d, float(np.clip(stats.kstwo.sf(d, n), 0.0, 1.0)), mean, sd, n)
