"""Cohen's kappa, its Fleiss-Cohen-Everitt SE and the confusion matrix, on hand-made calls."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from petcohort.engine.errors import StatsError
from petcohort.engine.stats.agreement_kappa import cohen_kappa, confusion_matrix

CATS = ("CMR", "PMR", "SMD", "PMD")
# 12 follow-ups: designed response and an automated call (3 disagreements)
DESIGNED = ["CMR", "CMR", "PMR", "PMR", "PMR", "SMD", "SMD", "SMD", "PMD", "PMD", "PMD", "PMD"]
CALLED = ["CMR", "PMR", "PMR", "PMR", "SMD", "SMD", "SMD", "PMD", "PMD", "PMD", "PMD", "PMD"]


def _fce_var(conf: np.ndarray) -> float:
    """Fleiss, Cohen & Everitt (1969) variance written in its (1 - p_e)^4 form (an independent formula)."""
    n = conf.sum()
    p = conf / n
    r, c = p.sum(1), p.sum(0)
    po, pe = np.trace(p), float(r @ c)
    k = len(p)
    t1 = sum(p[i, i] * ((1 - pe) - (c[i] + r[i]) * (1 - po)) ** 2 for i in range(k))
    t2 = (1 - po) ** 2 * sum(p[i, j] * (c[i] + r[j]) ** 2 for i in range(k) for j in range(k) if i != j)
    t3 = (po * pe - 2 * pe + po) ** 2
    return (t1 + t2 - t3) / (n * (1 - pe) ** 4)


def test_confusion_matrix_rows_reference_columns_calls():
    m = confusion_matrix(DESIGNED, CALLED, CATS)
    assert m.tolist() == [[1, 1, 0, 0], [0, 2, 1, 0], [0, 0, 2, 1], [0, 0, 0, 4]]


def test_kappa_matches_sklearn_and_hand_values():
    r = cohen_kappa(DESIGNED, CALLED, CATS)
    assert r.kappa == pytest.approx(cohen_kappa_score(DESIGNED, CALLED, labels=list(CATS)), abs=1e-12)
    # p_o = 9/12; p_e = (2*1 + 3*3 + 3*3 + 4*5) / 144 = 40/144
    assert r.accuracy == pytest.approx(0.75) and r.expected == pytest.approx(40 / 144)
    assert r.kappa == pytest.approx((0.75 - 40 / 144) / (1 - 40 / 144))
    assert r.se == pytest.approx(np.sqrt(_fce_var(r.confusion)), rel=1e-12)
    assert r.ci_low == pytest.approx(r.kappa - 1.959963984540054 * r.se, rel=1e-9)
    assert r.ci_high == pytest.approx(min(1.0, r.kappa + 1.959963984540054 * r.se), rel=1e-9)
    assert r.n == 12 and r.categories == CATS


def test_kappa_random_tables_against_sklearn():
    rng = np.random.default_rng(7)
    for _ in range(20):
        a = rng.choice(CATS, 30)
        b = np.where(rng.random(30) < 0.6, a, rng.choice(CATS, 30))
        r = cohen_kappa(list(a), list(b), CATS)
        assert r.kappa == pytest.approx(cohen_kappa_score(a, b, labels=list(CATS)), abs=1e-12)
        assert r.se == pytest.approx(np.sqrt(_fce_var(r.confusion)), rel=1e-9)


def test_perfect_agreement_has_a_point_interval():
    r = cohen_kappa(DESIGNED, DESIGNED, CATS)
    assert r.kappa == 1.0 and r.se == pytest.approx(0.0, abs=1e-12)
    assert r.ci_low == pytest.approx(1.0) and r.ci_high == 1.0


def test_missing_calls_and_bad_input():
    with pytest.raises(StatsError) as err:
        cohen_kappa(["CMR", "PMR"], ["CMR", None], CATS)
    assert err.value.reason == "STATS_NAN"
    r = cohen_kappa(DESIGNED + ["SMD"], CALLED + [None], CATS, nan_policy="omit")
    assert r.n == 12 and r.kappa == pytest.approx(cohen_kappa(DESIGNED, CALLED, CATS).kappa)
    for ref, calls, reason in ((["CMR"], ["CMR", "PMR"], "STATS_LENGTH_MISMATCH"),
                               (["CMR"], ["XYZ"], "STATS_BAD_LABELS"),
                               ([], [], "STATS_TOO_FEW"),
                               (["SMD", "SMD"], ["SMD", "SMD"], "STATS_KAPPA_UNDEFINED")):
        with pytest.raises(StatsError) as err:
            cohen_kappa(ref, calls, CATS)
        assert err.value.reason == reason
    with pytest.raises(StatsError) as err:
        cohen_kappa(DESIGNED, CALLED, CATS, level=1.0)
    assert err.value.reason == "BAD_VALUE"


def test_one_constant_side_gives_kappa_zero_without_an_interval():
    # every call PMD (the demo's threshold sources): kappa 0 by construction, SE undefined
    r = cohen_kappa(DESIGNED, ["PMD"] * len(DESIGNED), CATS)
    assert r.kappa == 0.0 and r.constant_side
    assert np.isnan(r.se) and np.isnan(r.ci_low) and np.isnan(r.ci_high)
    assert r.kappa == cohen_kappa_score(DESIGNED, ["PMD"] * len(DESIGNED), labels=list(CATS))
    assert not cohen_kappa(DESIGNED, CALLED, CATS).constant_side
