"""Stages organs, threshold, quantify, evaluate on a tiny in-memory cohort store."""
from __future__ import annotations

import numpy as np
import pytest

from petcohort.pipelines.config import RunConfig
from petcohort.pipelines.stage_evaluate import evaluate_stage
from petcohort.pipelines.stage_organs import organs_stage
from petcohort.pipelines.stage_quantify import quantify_stage
from petcohort.pipelines.stage_threshold import threshold_stage
from petcohort.pipelines.stages import STAGES, StageContext


def _store(name, *, liver=True, sul=0.8):
    from petcohort.storage.store import CohortStore

    shape = (30, 24, 26)
    pet = np.full(shape, 1.0, np.float32)
    ct = np.full(shape, -1000, np.int16)
    ct[:, 1:23, 1:25] = 40
    ct[:, 8:11, 8:11] = 600                       # spine
    pet[4:7, 4:7, 4:7] = 6.0                      # lesion 1
    pet[15:17, 12:14, 2:4] = 3.0                  # lesion 2
    manual = (pet > 2).astype(np.uint8)
    liv = np.zeros(shape, np.uint8)
    liv[8:26, 2:22, 14:26] = 1
    pet[liv == 1] = np.where(manual[liv == 1] == 1, pet[liv == 1], 1.5)
    brain = np.zeros(shape, np.uint8)
    brain[27:30, 4:16, 4:16] = 1
    pet[brain == 1] = 8.0                         # physiological, must be excluded
    store = CohortStore.create(f"memory://{name}")
    key = "P-00000000bb-T0"
    store.add_study(key, {"spacing": [3.0, 4.0, 4.0], "origin": [0.0, 0.0, 0.0], "timepoint": 0,
                          "sul_per_suvbw": sul, "sul_reason": None if sul else "SUL_NO_HEIGHT"})
    arrays = {"pet": pet, "ct": ct, "seg/manual": manual, "organs/brain": brain}
    if liver:
        arrays["organs/liver"] = liv
    store.write_arrays(key, arrays)
    return store, key


def _ctx(store, key, config=None):
    return StageContext(store=store, key=key, attrs=store.study_attrs(key), config=config or RunConfig())


def _commit(store, key, stage, out):
    store.commit_stage(key, stage, arrays=out.arrays, record={"summary": out.summary})


def test_registered_with_params():
    assert {"organs", "threshold", "quantify", "evaluate"} <= set(STAGES)
    assert "radius_mm" in STAGES["quantify"].params and "overlap" in STAGES["evaluate"].params


def test_stages_end_to_end():
    store, key = _store("stages-e2e")
    out = organs_stage(_ctx(store, key))
    assert out.summary["sources"]["liver"] == "store" and out.summary["sources"]["bone"] == "ct_hu"
    assert "organs/bone" in out.arrays and out.arrays["organs/bone"][:, 8:11, 8:11].all()
    _commit(store, key, "organs", out)
    # a re-run recognises its own derived bone mask
    assert organs_stage(_ctx(store, key)).summary["sources"]["bone"] == "ct_hu"

    out = threshold_stage(_ctx(store, key))
    assert set(out.arrays) == {"seg/threshold_suv25", "seg/threshold_41pct", "seg/threshold_percist"}, out.summary
    assert out.summary["excluded_organs"] == ["brain"]
    assert not out.arrays["seg/threshold_suv25"][27:].any()          # brain excluded
    _commit(store, key, "threshold", out)

    out = quantify_stage(_ctx(store, key))
    srcs = out.summary["sources"]
    assert set(srcs) == {"manual", "threshold_suv25", "threshold_41pct", "threshold_percist"}
    man = srcs["manual"]
    assert man["lesion_count"] == 2 and man["suvmax"] == pytest.approx(6.0)
    assert man["sulpeak"] == pytest.approx(0.8 * man["suvpeak"])
    assert man["pli"] is not None and man["pbi"] is not None
    assert len(out.summary["lesions"]["manual"]) == 2

    out = evaluate_stage(_ctx(store, key))
    ev = out.summary["sources"]
    assert "manual" not in ev and ev["threshold_suv25"]["dice"] == pytest.approx(1.0)
    assert ev["threshold_suv25"]["tp"] == 2 and ev["threshold_suv25"]["fp"] == 0


def test_missing_liver_and_sul_are_reasons_not_failures():
    store, key = _store("stages-noliver", liver=False, sul=None)
    out = organs_stage(_ctx(store, key))
    assert out.summary["liver_reason"] == "NO_LIVER_MASK"
    _commit(store, key, "organs", out)
    out = threshold_stage(_ctx(store, key))
    assert "seg/threshold_percist" not in out.arrays
    assert out.summary["threshold_percist_reason"] == "NO_LIVER_MASK"
    _commit(store, key, "threshold", out)
    cfg = RunConfig(sources=("threshold_suv25",))
    out = quantify_stage(_ctx(store, key, cfg))
    assert set(out.summary["sources"]) == {"manual", "threshold_suv25"}
    s = out.summary["sources"]["manual"]
    assert s["pli"] is None and s["pli_reason"] == "NO_LIVER_MASK"
    assert s["sulpeak_reason"] == "SUL_UNAVAILABLE"
