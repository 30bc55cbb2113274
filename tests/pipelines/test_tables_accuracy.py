"""Cohort tables percist_accuracy, percist_accuracy_confusion and tracking_accuracy from hand-made records."""
from __future__ import annotations

import json
import uuid

import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from petcohort.engine.stats.tracking_accuracy import ACCURACY_COUNTS, TrackingAccuracy
from petcohort.pipelines.tables import TABLES, build_outputs, collect
from petcohort.storage._backends import forget_memory_store
from petcohort.storage.store import CohortStore

DESIGNED = ["PMR", "SMD", "CMR", "PMD", "PMD"]
MANUAL = ["PMR", "SMD", "CMR", "PMD", None]          # patient 4: no percist record at all
AUTO = ["PMR", "PMD", None, "PMD", None]            # patient 2: baseline not measurable


def _acc(**counts) -> dict:
    return TrackingAccuracy(**(dict.fromkeys(ACCURACY_COUNTS, 0) | counts)).to_dict()


def _commit(store, key, stage, summary):
    store.commit_stage(key, stage, arrays={}, record={"summary": summary})


def _tracks() -> dict[int, dict | None]:
    a0 = _acc(n_predicted=3, n_correct=3, n_true_persisting=3, n_recovered=3, n_called_new=1, n_new_correct=1,
              n_true_new=1, n_new_found=1, n_baseline_lesions=3, n_followup_lesions=4)
    a1 = _acc(n_called_vanished=2, n_vanished_correct=2, n_true_vanished=2, n_vanished_found=2,
              n_baseline_lesions=2, n_followup_lesions=0)
    a4 = _acc(n_predicted=2, n_correct=1, n_true_persisting=2, n_recovered=1, n_baseline_lesions=2,
              n_followup_lesions=2)
    b0 = _acc(n_predicted=2, n_correct=1, n_true_persisting=2, n_recovered=1, n_called_new=2,
              n_baseline_lesions=2, n_followup_lesions=4)
    return {0: {"sources": {"manual": {"method": "registered", "accuracy": a0, "matches": []},
                            "nnunet_fu": {"method": "registered", "baseline_source": "nnunet_bl",
                                          "accuracy": b0, "matches": []}}, "skipped": {}},
            1: {"sources": {"manual": {"method": "registered", "accuracy": a1, "matches": []}},
                "skipped": {"nnunet_fu": "NOT_ON_BASELINE"}},
            2: {"sources": {"manual": {"method": "registered", "matches": []}}, "skipped": {},
                "accuracy_reason": "NO_TRUTH_IDS"},
            3: None,                                  # failed track (e.g. the baseline failed)
            4: {"sources": {"manual": {"method": "registered", "accuracy": a4, "matches": []}}, "skipped": {}}}


@pytest.fixture
def store():
    name = f"tables-acc-{uuid.uuid4().hex[:10]}"
    s = CohortStore.create(f"memory://{name}")
    tracks = _tracks()
    for p, designed in enumerate(DESIGNED):
        patient = f"P-{p:010x}"
        for tp in (0, 1):
            key = f"{patient}-T{tp}"
            s.add_study(key, {"patient": patient, "timepoint": tp, "truth": {
                "designed_response": designed if tp else None, "percist": "SMD" if tp else None}})
        fu = f"{patient}-T1"
        if MANUAL[p] is None:
            s.fail_stage(fu, "percist", record={"reason": "SUL_UNAVAILABLE"})
        else:
            auto = {"category": AUTO[p], "reason": None if AUTO[p] else "PERCIST_BASELINE_NOT_MEASURABLE",
                    "baseline_source": "nnunet_bl"}
            _commit(s, fu, "percist", {"sources": {"manual": {"category": MANUAL[p], "baseline_source": "manual"},
                                                   "nnunet_fu": auto}})
        if tracks[p] is None:
            s.fail_stage(fu, "track", record={"reason": "NO_BASELINE"})
        else:
            _commit(s, fu, "track", tracks[p])
    yield s
    forget_memory_store(name)


def test_percist_accuracy_against_designed_response(store):
    f = collect(store).frames
    acc = f["percist_accuracy"].set_index("source")
    m = acc.loc["manual"]
    assert (m.n, m.n_called, m.n_no_call, m.correct) == (5, 4, 1, 4)
    assert m.accuracy == pytest.approx(0.8) and m.accuracy_called == 1.0 and m.kappa == 1.0
    assert json.loads(m.no_call_reasons) == {"NO_PERCIST_RECORD": 1} and m.reference == "designed_response"
    a = acc.loc["nnunet_fu"]
    assert (a.n, a.n_called, a.correct, a.kappa_n) == (5, 3, 2, 3) and a.baseline_sources == "nnunet_bl"
    assert a.accuracy == pytest.approx(0.4) and a.accuracy_called == pytest.approx(2 / 3)
    assert json.loads(a.no_call_reasons) == {"NO_PERCIST_RECORD": 1, "PERCIST_BASELINE_NOT_MEASURABLE": 1}
    ref = cohen_kappa_score(["PMR", "SMD", "PMD"], ["PMR", "PMD", "PMD"], labels=["CMR", "PMR", "SMD", "PMD"])
    assert a.kappa == pytest.approx(ref) and a.kappa_ci_low <= a.kappa <= a.kappa_ci_high
    conf = f["percist_accuracy_confusion"].set_index(["source", "designed", "call"])["count"]
    assert conf.xs("manual").sum() == 5 and conf.xs("nnunet_fu").sum() == 5
    assert conf[("nnunet_fu", "SMD", "PMD")] == 1 and conf[("nnunet_fu", "CMR", "none")] == 1
    assert conf[("manual", "PMD", "none")] == 1 and conf[("manual", "PMD", "PMD")] == 1
    assert len(conf.xs("manual")) == 16 + 1                  # the 4 x 4 grid plus the no-call cell
    assert json.loads(a.confusion)["SMD"]["PMD"] == 1
    # the truth.percist consistency check stays a separate table
    assert f["percist_confusion"].set_index(["source", "truth", "call"])["count"][("manual", "SMD", "SMD")] == 1


def test_tracking_accuracy_pooled_and_counted(store):
    t = collect(store).frames["tracking_accuracy"].set_index("source")
    m = t.loc["manual"]
    assert (m.n_followups, m.n_pairs, m.n_predicted, m.n_correct) == (3, 5, 5, 4)
    assert (m.precision, m.recall, m.f1) == (pytest.approx(0.8), pytest.approx(0.8), pytest.approx(0.8))
    assert (m.new_precision, m.new_recall, m.vanished_precision, m.vanished_recall) == (1.0, 1.0, 1.0, 1.0)
    assert (m.n_no_followup_lesions, m.n_no_truth, m.n_baseline_missing, m.n_not_tracked) == (1, 1, 0, 1)
    a = t.loc["nnunet_fu"]
    assert (a.n_followups, a.precision, a.recall, a.f1) == (1, 0.5, 0.5, 0.5)
    assert a.new_precision == 0.0 and pd.isna(a.new_recall)
    assert a.n_baseline_missing == 1 and a.baseline_sources == "nnunet_bl" and a.methods == "registered"


def test_written_with_the_other_tables(store, tmp_path):
    paths = build_outputs(store, tmp_path)
    for name in ("percist_accuracy", "percist_accuracy_confusion", "tracking_accuracy"):
        assert name in TABLES and paths[name].exists()
        assert len(pd.read_parquet(paths[name])) > 0


def test_empty_store_gives_empty_tables():
    name = f"tables-acc-empty-{uuid.uuid4().hex[:10]}"
    s = CohortStore.create(f"memory://{name}")
    try:
        out = collect(s)
        for table in ("percist_accuracy", "percist_accuracy_confusion", "tracking_accuracy"):
            assert out.frames[table].empty
        assert out.notes["tracking_accuracy"] and out.notes["percist_accuracy"]
    finally:
        forget_memory_store(name)
