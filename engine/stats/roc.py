"""ROC analysis: curve, AUC, Youden cutoff, DeLong variance and test.

Conventions (all functions): a *higher* score means the positive class
(``y_true == 1``); a case is called positive when ``score >= threshold``.
Tied scores between classes count 1/2 in the AUC (the Mann-Whitney form).

DeLong, DeLong & Clarke-Pearson (1988), Biometrics 44:837-845, computed with
the midrank ("fast") algorithm of Sun & Xu (2014), IEEE Signal Processing
Letters 21(11):1389-1393, which gives the same placement values in
O(n log n).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from petcohort.engine.errors import StatsError
from petcohort.engine.stats._input import scored

__all__ = ["RocCurve", "YoudenResult", "DelongResult", "AucCi", "roc_curve", "roc_auc", "youden_cutoff",
           "delong_test", "auc_ci", "placements"]


@dataclass(frozen=True)
class RocCurve:
    """Empirical ROC curve, one point per distinct score plus the origin.

    fpr, tpr : (k + 1,) ndarray of float, non-decreasing, from (0, 0) to (1, 1).
    thresholds : (k + 1,) ndarray of float, decreasing; ``thresholds[0] = +inf``
        (nothing called positive), then every distinct score.
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray


@dataclass(frozen=True)
class YoudenResult:
    """Cutoff maximising Youden's J = sensitivity + specificity - 1.

    threshold : a data value (the lowest score called positive, ``score >= threshold``).
    """

    threshold: float
    sensitivity: float
    specificity: float
    j: float


@dataclass(frozen=True)
class DelongResult:
    """DeLong test of two correlated AUCs on the same cases (two-sided)."""

    auc_a: float
    auc_b: float
    var_a: float
    var_b: float
    cov: float
    z: float
    p: float
    n_pos: int
    n_neg: int


@dataclass(frozen=True)
class AucCi:
    """AUC with its DeLong variance and a Wald interval clipped to [0, 1]."""

    auc: float
    ci_low: float
    ci_high: float
    var: float
    n_pos: int
    n_neg: int


def roc_curve(y_true: Any, score: Any, *, nan_policy: str = "raise") -> RocCurve:
    """Empirical ROC curve (every distinct score is a threshold).

    Parameters
    ----------
    y_true : (n,) bool or {0, 1}
        True class, 1 = positive.
    score : (n,) float
        Higher means more likely positive.
    nan_policy : {"raise", "omit"}

    Raises
    ------
    StatsError
        ``STATS_SINGLE_CLASS``, ``STATS_LENGTH_MISMATCH``, ``STATS_NAN``,
        ``STATS_ALL_NAN``, ``STATS_BAD_LABELS``.
    """
    y, (s,) = scored(y_true, score, nan_policy=nan_policy)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    # the last index of each run of equal scores: all tied cases switch together
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], s_sorted.size - 1]
    tps = np.cumsum(y_sorted)[last].astype(np.float64)
    fps = (last + 1 - tps).astype(np.float64)
    tpr = np.r_[0.0, tps / y.sum()]
    fpr = np.r_[0.0, fps / (~y).sum()]
    return RocCurve(fpr=fpr, tpr=tpr, thresholds=np.r_[np.inf, s_sorted[last]])


def placements(y: np.ndarray, s: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and DeLong placement values via midranks (Sun & Xu 2014, eqs. 5-7).

    Parameters
    ----------
    y : (n,) bool, validated labels (both classes present).
    s : (n,) float, validated scores.

    Returns
    -------
    auc : float
    v10 : (m,) placement of each positive: fraction of negatives below it (ties 1/2).
    v01 : (k,) placement of each negative: fraction of positives above it (ties 1/2).
    """
    pos, neg = s[y], s[~y]
    m, k = pos.size, neg.size
    tz = stats.rankdata(np.concatenate([pos, neg]))
    tx, ty = stats.rankdata(pos), stats.rankdata(neg)
    v10 = (tz[:m] - tx) / k
    v01 = 1.0 - (tz[m:] - ty) / m
    auc = float((tz[:m].sum() - m * (m + 1) / 2.0) / (m * k))
    return auc, v10, v01


def roc_auc(y_true: Any, score: Any, *, nan_policy: str = "raise") -> float:
    """Area under the empirical ROC curve, P(score_pos > score_neg) + 1/2 P(tie).

    Degenerate, documented case: constant scores give 0.5.
    Raises the same errors as :func:`roc_curve`.
    """
    y, (s,) = scored(y_true, score, nan_policy=nan_policy)
    return placements(y, s)[0]


def youden_cutoff(y_true: Any, score: Any, *, nan_policy: str = "raise") -> YoudenResult:
    """Cutoff maximising Youden's J on the empirical ROC curve.

    The threshold sits *at a data value*: the lowest score still called
    positive (``score >= threshold``), so it is a value that occurred in the
    data. Ties in J are broken towards the highest threshold (the most
    specific cutoff). Degenerate, documented case: constant scores give that
    score as threshold with sensitivity 1, specificity 0, J 0.
    """
    curve = roc_curve(y_true, score, nan_policy=nan_policy)
    j = curve.tpr[1:] - curve.fpr[1:]
    best = int(np.argmax(j)) + 1  # argmax returns the first maximum = highest threshold
    return YoudenResult(threshold=float(curve.thresholds[best]), sensitivity=float(curve.tpr[best]),
                        specificity=float(1.0 - curve.fpr[best]), j=float(j[best - 1]))


def _covariance(y: np.ndarray, scores: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their DeLong covariance matrix S = S10 / m + S01 / n (DeLong 1988, eq. 5)."""
    aucs, v10s, v01s = [], [], []
    for s in scores:
        auc, v10, v01 = placements(y, s)
        aucs.append(auc)
        v10s.append(v10)
        v01s.append(v01)
    m, k = v10s[0].size, v01s[0].size
    s10 = np.atleast_2d(np.cov(np.vstack(v10s), ddof=1)) if m > 1 else np.zeros((len(scores),) * 2)
    s01 = np.atleast_2d(np.cov(np.vstack(v01s), ddof=1)) if k > 1 else np.zeros((len(scores),) * 2)
    return np.asarray(aucs), s10 / m + s01 / k


def auc_ci(y_true: Any, score: Any, *, level: float = 0.95, nan_policy: str = "raise") -> AucCi:
    """AUC with its DeLong variance and the Wald interval ``auc +- q sqrt(var)``, clipped to [0, 1].

    A class with a single case contributes zero variance (its sample
    covariance is undefined). Degenerate, documented case: perfectly separated
    or constant scores have variance 0 and a zero-width interval.

    Raises
    ------
    StatsError
        ``BAD_VALUE`` plus the errors of :func:`roc_curve`.
    """
    if not 0.0 < level < 1.0:
        raise StatsError("BAD_VALUE", f"level={level!r}; expected a number in (0, 1)")
    y, (s,) = scored(y_true, score, nan_policy=nan_policy)
    aucs, cov = _covariance(y, [s])
    auc, var = float(aucs[0]), float(max(cov[0, 0], 0.0))
    half = stats.norm.ppf(0.5 + level / 2.0) * np.sqrt(var)
    return AucCi(auc, float(max(0.0, auc - half)), float(min(1.0, auc + half)), var,
                 int(y.sum()), int((~y).sum()))


def delong_test(y_true: Any, score_a: Any, score_b: Any, *, nan_policy: str = "raise") -> DelongResult:
    """DeLong's test of H0: AUC_a == AUC_b for two scores on the same cases.

    ``z = (auc_a - auc_b) / sqrt(var_a + var_b - 2 cov)``, two-sided normal p.

    Raises
    ------
    StatsError
        ``STATS_ZERO_VARIANCE`` when the variance of the difference is 0
        (e.g. identical or both perfectly separating scores): z is undefined.
        Plus the errors of :func:`roc_curve` (rows missing in any of the
        three vectors are dropped together under ``nan_policy="omit"``).
    """
    y, (sa, sb) = scored(y_true, score_a, score_b, nan_policy=nan_policy, score_names=("score_a", "score_b"))
    aucs, cov = _covariance(y, [sa, sb])
    var_diff = cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]
    if not var_diff > 1e-15:
        raise StatsError("STATS_ZERO_VARIANCE",
                         f"the DeLong variance of AUC_a - AUC_b is {var_diff:.3g}; z is undefined "
                         f"(AUCs {aucs[0]:.4f} and {aucs[1]:.4f})")
    z = float((aucs[0] - aucs[1]) / np.sqrt(var_diff))
    return DelongResult(float(aucs[0]), float(aucs[1]), float(cov[0, 0]), float(cov[1, 1]), float(cov[0, 1]),
                        z, float(2.0 * stats.norm.sf(abs(z))), int(y.sum()), int((~y).sum()))
