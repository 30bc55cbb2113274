"""Cohort design: demographics, protocol, visits, designed responses, lesion sites."""
from __future__ import annotations

import numpy as np
import pytest
from petcohort.engine.phantom.design import CATEGORIES, SCANNERS, design_patient, stream
from petcohort.engine.phantom.physics import suv_factors


@pytest.fixture(scope="module")
def cohort():
    return [design_patient(0, i, sites=2) for i in range(12)]


def test_stream_is_spawn_child():
    child = np.random.SeedSequence(7).spawn(4)[3]
    ref = np.random.Generator(np.random.PCG64(child)).random(3)
    assert np.array_equal(stream(7, 3).random(3), ref)


def test_design_deterministic_and_independent_of_count():
    a = design_patient(5, 3, sites=2)
    b = design_patient(5, 3, sites=2)
    assert a.body.height_m == b.body.height_m and a.body.weight_kg == b.body.weight_kg
    assert [les.centre for les in a.lesions] == [les.centre for les in b.lesions]
    assert design_patient(6, 3, sites=2).lesions[0].centre != a.lesions[0].centre


def test_all_categories_and_balanced_response(cohort):
    first = [p.visits[1].designed for p in cohort]
    assert set(first) == set(CATEGORIES)
    responders = sum(c in ("CMR", "PMR") for c in first)
    assert abs(responders - (len(first) - responders)) <= 2
    for p in cohort:
        assert p.visits[0].designed is None
        assert 2 <= len(p.visits) <= 3


def test_demographics_and_protocol(cohort):
    sexes = [p.body.sex for p in cohort]
    assert sexes.count("F") > sexes.count("M")
    for p in cohort:
        assert 1.50 <= p.body.height_m <= 1.85 and 45 <= p.body.weight_kg <= 110
        assert p.site in ("A", "B")
        assert {v.scanner.name for v in p.visits} <= {s.name for s in SCANNERS[p.site]}
        for v in p.visits:
            assert 150e6 <= v.dose_bq <= 400e6
            per_kg = v.dose_bq / 1e6 / v.weight_kg
            assert 2.9 <= per_kg <= 4.1 or v.dose_bq in (150e6, 400e6)
            assert 50 <= v.uptake_min <= 75
        days = [v.days for v in p.visits]
        assert days[0] == 0 and all(np.diff(days) > 0)
    first = [p.visits[1].days / 30.44 for p in cohort]
    assert 1.0 <= float(np.median(first)) <= 2.5


def test_lesions(cohort):
    counts = [sum(1 for les in p.lesions if les.first_visit == 0) for p in cohort]
    assert min(counts) >= 1 and max(counts) > 8  # long tail
    organs = [les.organ for p in cohort for les in p.lesions]
    assert organs.count("bone") == max(organs.count(o) for o in set(organs))
    for p in cohort:
        ids = [les.id for les in p.lesions]
        assert ids == list(range(1, len(ids) + 1))
        for les in p.lesions:
            assert 4.0 <= les.diameter_mm <= 42.0
            assert 2.0 <= les.suv <= 15.0
    # progression patients gain new lesions somewhere in the cohort
    assert any(les.first_visit > 0 for p in cohort for les in p.lesions)


def test_responses_follow_design(cohort):
    for p in cohort:
        base = p.visits[0].states
        hottest = max(base, key=lambda i: base[i].suv)
        for v in p.visits[1:]:
            fu = [s.suv for s in v.states.values() if s.present]
            if v.designed == "CMR":
                assert not fu
            elif v.designed == "PMR":
                assert max(fu, default=0.0) <= 0.7 * base[hottest].suv
            elif v.designed == "SMD":
                assert abs(max(fu) / base[hottest].suv - 1) < 0.2


def test_lbm_and_suv_factors():
    # Janmahasatian 2005: female 60 kg, 1.65 m -> 9270*60/(8780+244*22.04)
    bmi = 60 / 1.65 ** 2
    lbm = 9270 * 60 / (8780 + 244 * bmi)
    f = suv_factors(60, 1.65, "F", 200e6, 3600.0)
    decayed = 200e6 * np.exp(-np.log(2) / 6586.2 * 3600)
    assert f["bw_factor"] == pytest.approx(60000 / decayed)
    assert f["sul_per_suvbw"] == pytest.approx(lbm / 60)
    assert f["lbm_factor"] == pytest.approx(lbm * 1000 / decayed)
    assert suv_factors(60, 1.65, "O", 200e6, 3600.0)["sul_per_suvbw"] is None
