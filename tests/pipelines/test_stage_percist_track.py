"""Tests of the ``track`` and ``percist`` stages on a tiny in-memory store."""
from __future__ import annotations

import uuid

import numpy as np
import pytest

from petcohort.engine.errors import PetCohortError
from petcohort.pipelines.config import RunConfig
from petcohort.pipelines.stage_percist import percist_stage
from petcohort.pipelines.stage_track import track_stage
from petcohort.pipelines.stages import STAGES, StageContext
from petcohort.storage._backends import forget_memory_store
from petcohort.storage.store import CohortStore

BL, FU = "P-0123456789-T0", "P-0123456789-T1"
SHAPE, SP = (14, 14, 30), [4.0, 4.0, 4.0]
FACTOR = 0.8  # SUL = SUVbw * 0.8


def _attrs(tp, **kw):
    a = {"patient": "P-0123456789", "timepoint": tp, "spacing": SP, "origin": [0.0, 0.0, 0.0],
         "sul_per_suvbw": FACTOR, "uptake_min": 60.0}
    a.update(kw)
    return a


def _arrays(lesion_sul, extra_lesion=None, shift=0):
    sul = np.full(SHAPE, 0.5, np.float32)
    liver = np.zeros(SHAPE, np.uint8)
    liver[2:12, 2:12, 2:12] = 1
    sul[liver == 1] = 1.0
    seg = np.zeros(SHAPE, np.uint8)
    seg[5:8, 5:8, 20 + shift:23 + shift] = 1
    sul[seg == 1] = lesion_sul
    if extra_lesion is not None:
        seg[10:12, 10:12, 26:28] = 1
        sul[10:12, 10:12, 26:28] = extra_lesion
    return {"pet": sul / np.float32(FACTOR), "seg/manual": seg, "organs/liver": liver,
            "organs/bone": (seg == 1).astype(np.uint8)}


@pytest.fixture
def store():
    name = f"percist-{uuid.uuid4().hex[:10]}"
    s = CohortStore.create(f"memory://{name}")
    yield s
    forget_memory_store(name)


def _setup(store, bl_arrays, fu_arrays, bl_attrs=None, fu_attrs=None):
    store.add_study(BL, bl_attrs or _attrs(0))
    store.write_arrays(BL, bl_arrays)
    store.add_study(FU, fu_attrs or _attrs(1))
    store.write_arrays(FU, fu_arrays)


def _run(store, baseline=BL):
    ctx = StageContext(store=store, key=FU, attrs=store.study_attrs(FU), config=RunConfig(), baseline_key=baseline)
    tr = track_stage(ctx)
    store.commit_stage(FU, "track", arrays={}, record={"stage": "track", "summary": tr.summary})
    return tr.summary, percist_stage(ctx).summary


def test_stages_are_registered_for_followups():
    assert STAGES["track"].applies_to == "followup" and STAGES["percist"].applies_to == "followup"
    assert "track" in STAGES["percist"].requires


def test_partial_response_same_grid(store):
    _setup(store, _arrays(4.0), _arrays(2.0, shift=1))
    track, percist = _run(store)
    t = track["sources"]["manual"]
    assert t["method"] == "overlap" and (t["n_new"], t["n_vanished"], t["n_persisting"]) == (0, 0, 1)
    assert t["matches"][0]["distance_mm"] == pytest.approx(4.0)
    p = percist["sources"]["manual"]
    assert (p["category"], p["rule"]) == ("PMR", "sulpeak_down_30pct_0.8")
    assert p["evidence"]["sulpeak_delta_pct"] == pytest.approx(-50.0, rel=1e-5)
    assert p["evidence"]["baseline_reference"]["source"] == "liver"
    assert p["evidence"]["baseline_reference"]["mean"] == pytest.approx(1.0, rel=1e-6)
    assert p["evidence"]["baseline_target"]["organ"] == "bone"
    assert p["qc_flags"] == []


def test_new_lesion_gives_pmd(store):
    _setup(store, _arrays(4.0), _arrays(4.0, extra_lesion=3.0))
    track, percist = _run(store)
    assert track["sources"]["manual"]["n_new"] == 1
    assert (percist["sources"]["manual"]["category"], percist["sources"]["manual"]["rule"]) == ("PMD", "new_lesion")


def test_different_grids_match_by_centroid(store):
    fu = _arrays(4.0)
    fu = {k: np.pad(v, ((0, 0), (0, 0), (2, 0))) for k, v in fu.items()}  # 2 more columns at low X
    fu["pet"][fu["pet"] == 0] = 0.5 / FACTOR
    _setup(store, _arrays(4.0), fu, fu_attrs=_attrs(1, origin=[0.0, 0.0, -8.0], uptake_min=90.0))
    track, percist = _run(store)
    t = track["sources"]["manual"]
    assert t["method"] == "centroid" and t["n_persisting"] == 1
    assert t["matches"][0]["distance_mm"] == pytest.approx(0.0)
    p = percist["sources"]["manual"]
    assert p["category"] == "SMD" and "UPTAKE_TIME_DIFFERS" in p["qc_flags"]


def test_missing_baseline_and_sul(store):
    _setup(store, _arrays(4.0), _arrays(2.0), bl_attrs=_attrs(0, sul_per_suvbw=None, sul_reason="SEX_OTHER"))
    ctx = StageContext(store=store, key=FU, attrs=store.study_attrs(FU), config=RunConfig(), baseline_key=None)
    with pytest.raises(PetCohortError) as err:
        track_stage(ctx)
    assert err.value.reason == "NO_BASELINE"
    with pytest.raises(PetCohortError) as err:
        _run(store)
    assert err.value.reason == "SUL_UNAVAILABLE" and "baseline" in err.value.message


def test_no_reference_gives_no_call(store):
    bl, fu = _arrays(4.0), _arrays(2.0)
    for a in (bl, fu):
        a["organs/liver"] = np.zeros(SHAPE, np.uint8)
    _setup(store, bl, fu)
    _, percist = _run(store)
    p = percist["sources"]["manual"]
    assert p["category"] is None and p["reason"] == "NO_REFERENCE"


def test_nnunet_fu_pairs_with_baseline_nnunet_bl_and_unknown_sources_skip(store):
    bl, fu = _arrays(4.0), _arrays(2.0)
    bl["seg/nnunet_bl"] = bl["seg/manual"]
    fu["seg/nnunet_fu"] = fu["seg/manual"]
    fu["seg/threshold_suv25"] = fu["seg/manual"]  # not on the baseline
    _setup(store, bl, fu)
    track, percist = _run(store)
    assert track["sources"]["nnunet_fu"]["baseline_source"] == "nnunet_bl"
    assert track["skipped"] == {"threshold_suv25": "NOT_ON_BASELINE"}
    assert percist["sources"]["nnunet_fu"]["category"] == "PMR"
    assert percist["sources"]["nnunet_fu"]["baseline_source"] == "nnunet_bl"
    assert set(percist["sources"]) == {"manual", "nnunet_fu"}


def test_percist_needs_a_committed_track_record(store):
    _setup(store, _arrays(4.0), _arrays(2.0))
    ctx = StageContext(store=store, key=FU, attrs=store.study_attrs(FU), config=RunConfig(), baseline_key=BL)
    with pytest.raises(PetCohortError) as err:
        percist_stage(ctx)
    assert err.value.reason == "UPSTREAM_MISSING"


def test_percist_peaks_fall_back_to_cpu_after_a_device_out_of_memory(store, monkeypatch):
    from petcohort.engine import backend

    def oom(*_a, **_k):
        class OutOfMemoryError(MemoryError):  # the name cupy.cuda.memory uses
            pass
        raise OutOfMemoryError("Out of memory allocating 4,194,304 bytes")

    _setup(store, _arrays(4.0), _arrays(2.0, shift=1))
    _, cpu = _run(store)
    assert "device" not in cpu
    monkeypatch.setattr(backend, "stage_device", lambda: "cuda")
    monkeypatch.setattr(backend, "to_device", oom)
    _, dev = _run(store)
    assert dev["device"] == "cpu" and dev["device_fallback"] == "GPU_OUT_OF_MEMORY"
    assert dev["sources"] == cpu["sources"]                                # the CPU result, exactly


@pytest.mark.gpu
def test_percist_gpu_equals_cpu(store, monkeypatch):
    from petcohort.engine import backend

    if not backend.gpu_available():
        pytest.skip("needs cupy and a CUDA device")
    _setup(store, _arrays(4.0, extra_lesion=2.5), _arrays(2.0, extra_lesion=3.0, shift=1))
    monkeypatch.setattr(backend, "stage_device", lambda: "cpu")
    _, cpu = _run(store)
    monkeypatch.setattr(backend, "stage_device", lambda: "cuda")
    _, dev = _run(store)
    assert dev["device"] == "cuda"
    for src, call in cpu["sources"].items():
        assert dev["sources"][src]["category"] == call["category"] and dev["sources"][src]["rule"] == call["rule"]
        for k in ("baseline_target", "followup_target"):
            a, b = call["evidence"].get(k), dev["sources"][src]["evidence"].get(k)
            assert (a is None) == (b is None)
            if a:
                assert b["sulpeak"] == pytest.approx(a["sulpeak"], rel=1e-5)
