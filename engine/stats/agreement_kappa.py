"""Agreement of categorical calls with a reference: accuracy, Cohen's kappa, confusion matrix.

Used for automated PERCIST calls against the designed response of each
follow-up (docs/methods.md "PERCIST 1.0": accuracy, unweighted Cohen's kappa over
the 4 categories with its confidence interval, and the confusion matrix).

Definitions (``p_ij`` = share of items with reference ``i`` and call ``j``,
``p_i.`` / ``p_.j`` the row / column margins, ``n`` items):

* observed agreement (accuracy) ``p_o = sum_i p_ii``;
* chance agreement ``p_e = sum_i p_i. p_.i``;
* Cohen's kappa ``(p_o - p_e) / (1 - p_e)`` (Cohen 1960, unweighted);
* standard error: the large-sample (non-null) variance of Fleiss, Cohen and
  Everitt, Psychol Bull 1969;72:323-327::

      var = ( sum_i p_ii [1 - (p_i. + p_.i)(1 - kappa)]^2
              + (1 - kappa)^2 sum_{i != j} p_ij (p_.i + p_j.)^2
              - [kappa - p_e (1 - kappa)]^2 ) / (n (1 - p_e)^2)

* interval ``kappa +- z_(1+level)/2 * se`` (Wald), clipped to [-1, 1].
* When one side uses a single category (e.g. every automated call is PMD),
  kappa is 0 by construction and its sampling variance is degenerate: ``se``
  and the interval are NaN (``constant_side`` True) rather than a
  misleading [0, 0].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import stats

from petcohort.engine.errors import StatsError
from petcohort.engine.stats._input import check_policy

__all__ = ["KappaResult", "confusion_matrix", "cohen_kappa"]


@dataclass(frozen=True)
class KappaResult:
    """Accuracy and Cohen's kappa of ``calls`` against ``reference``.

    Attributes
    ----------
    kappa, se, ci_low, ci_high : float
        Kappa, its Fleiss-Cohen-Everitt (1969) asymptotic SE and Wald interval
        (NaN when ``constant_side``).
    accuracy : float
        Observed agreement ``p_o`` (share of identical calls).
    expected : float
        Chance agreement ``p_e``.
    n : int
        Items compared.
    categories : tuple of str
        Row and column order of ``confusion``.
    confusion : (k, k) ndarray of int64
        Rows: reference category; columns: call.
    constant_side : bool
        The reference or the calls use one category only (kappa 0 by
        construction, SE undefined).
    """

    kappa: float
    se: float
    ci_low: float
    ci_high: float
    accuracy: float
    expected: float
    n: int
    categories: tuple[str, ...]
    confusion: np.ndarray
    constant_side: bool = False


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def confusion_matrix(reference: Sequence[Any], calls: Sequence[Any], categories: Sequence[str], *,
                     nan_policy: str = "raise") -> np.ndarray:
    """Counts of (reference, call) pairs, rows = reference, columns = call, in ``categories`` order.

    Raises
    ------
    StatsError
        ``STATS_LENGTH_MISMATCH``, ``STATS_NAN`` (a missing value with
        ``nan_policy="raise"``), ``STATS_BAD_LABELS`` (a value outside
        ``categories``, or repeated categories), ``BAD_VALUE``.
    """
    check_policy(nan_policy)
    ref, got = list(reference), list(calls)
    if len(ref) != len(got):
        raise StatsError("STATS_LENGTH_MISMATCH", f"reference has {len(ref)} items, calls has {len(got)}")
    cats = [str(c) for c in categories]
    if len(set(cats)) != len(cats) or not cats:
        raise StatsError("STATS_BAD_LABELS", f"categories must be distinct and non-empty, got {cats}")
    index = {c: i for i, c in enumerate(cats)}
    out = np.zeros((len(cats), len(cats)), dtype=np.int64)
    for r, c in zip(ref, got):
        if _missing(r) or _missing(c):
            if nan_policy == "raise":
                raise StatsError("STATS_NAN", "a reference or call is missing (None/NaN); use nan_policy='omit'")
            continue
        if str(r) not in index or str(c) not in index:
            raise StatsError("STATS_BAD_LABELS", f"value {r if str(r) not in index else c!r} is not one of {cats}")
        out[index[str(r)], index[str(c)]] += 1
    return out


def _kappa_se(p: np.ndarray, kappa: float, p_e: float, n: int) -> float:
    """Fleiss, Cohen & Everitt (1969) large-sample standard error of kappa (module docstring)."""
    rows, cols = p.sum(axis=1), p.sum(axis=0)
    diag = np.diag(p)
    a = float(np.sum(diag * (1.0 - (rows + cols) * (1.0 - kappa)) ** 2))
    weight = (cols[:, None] + rows[None, :]) ** 2  # (p_.i + p_j.)^2 for cell (i, j)
    off = p * weight
    b = (1.0 - kappa) ** 2 * float(off.sum() - np.trace(off))
    c = (kappa - p_e * (1.0 - kappa)) ** 2
    var = (a + b - c) / (n * (1.0 - p_e) ** 2)
    return float(np.sqrt(max(var, 0.0)))  # rounding can make a zero variance slightly negative


def cohen_kappa(reference: Sequence[Any], calls: Sequence[Any], categories: Sequence[str], *,
                level: float = 0.95, nan_policy: str = "raise") -> KappaResult:
    """Unweighted Cohen's kappa with the Fleiss-Cohen-Everitt (1969) SE and a Wald interval.

    Parameters
    ----------
    reference, calls : sequence of str
        Paired categorical values (e.g. designed and automated PERCIST
        categories), same length.
    categories : sequence of str
        All categories (e.g. CMR, PMR, SMD, PMD); unused ones still count
        as rows/columns of the confusion matrix.
    level : float in (0, 1)
        Confidence level of the interval.
    nan_policy : {"raise", "omit"}
        ``"omit"`` drops pairs with a missing member (None/NaN).

    Returns
    -------
    KappaResult
        ``kappa == 1`` (perfect agreement) gives ``se == 0`` and the
        interval ``[1, 1]``.

    Raises
    ------
    StatsError
        ``STATS_TOO_FEW`` (no pair), ``STATS_KAPPA_UNDEFINED`` (chance
        agreement 1: both sides use one and the same single category),
        ``BAD_VALUE``, plus :func:`confusion_matrix`'s codes.
    """
    if not 0.0 < level < 1.0:
        raise StatsError("BAD_VALUE", f"level={level!r}; expected a number in (0, 1)")
    conf = confusion_matrix(reference, calls, categories, nan_policy=nan_policy)
    n = int(conf.sum())
    if n == 0:
        raise StatsError("STATS_TOO_FEW", "no (reference, call) pair to compare")
    p = conf / n
    p_o = float(np.trace(p))
    p_e = float(np.sum(p.sum(axis=1) * p.sum(axis=0)))
    if p_e >= 1.0:
        raise StatsError("STATS_KAPPA_UNDEFINED", "every reference and every call is the same single category: "
                                                  "chance agreement is 1 and kappa is 0/0")
    kappa = (p_o - p_e) / (1.0 - p_e)
    if min(np.count_nonzero(conf.sum(axis=1)), np.count_nonzero(conf.sum(axis=0))) == 1:
        # one side constant: kappa == 0 whatever the other side does; no sampling variance to speak of
        nan = float("nan")
        return KappaResult(0.0, nan, nan, nan, p_o, p_e, n, tuple(str(c) for c in categories), conf, True)
    se = _kappa_se(p, kappa, p_e, n)
    half = float(stats.norm.ppf(0.5 + level / 2.0)) * se
    return KappaResult(float(kappa), se, float(max(kappa - half, -1.0)), float(min(kappa + half, 1.0)), p_o, p_e,
                       n, tuple(str(c) for c in categories), conf)
