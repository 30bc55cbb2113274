"""Stages register, segment_bl, segment_fu on a tiny in-memory store (random-weight nnU-Net models)."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("nnunetv2", reason="nnunetv2 is not installed: run scripts/install_seg.sh .venv")
pytest.importorskip("ants", reason="antspyx is not installed: run scripts/install_seg.sh .venv")

import seg_test_data as data
from petcohort.engine.errors import PetCohortError
from petcohort.engine.segment import nnunet
from petcohort.pipelines.config import RunConfig
from petcohort.pipelines.stage_register import register_stage_fn
from petcohort.pipelines.stage_segment import segment_bl_stage, segment_fu_stage
from petcohort.pipelines.stages import STAGES, StageContext


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("seg-models")
    bl = data.make_model_folder(base / "bl", ("PET", "CT"), folds=(0, 1))
    fu = data.make_model_folder(base / "fu", ("PET", "CT", "PET_BL", "noNorm"), folds=(0,), seed=5)
    yield {"model_bl": bl, "model_fu": fu, "tta": False, "tile_step": 1.0, "device": "cpu"}
    nnunet.clear_cache()


def _ctx(store, key, extra=None, suv_clip=5.0):
    attrs = store.study_attrs(key)
    base = None
    if int(attrs["timepoint"]) > 0:
        cand = f"{attrs['patient']}-T0"
        base = cand if cand in store.study_keys() else None
    return StageContext(store=store, key=key, attrs=attrs, config=RunConfig(suv_clip=suv_clip, extra=extra or {}),
                        baseline_key=base)


def _run(store, key, stage, fn, extra):
    out = fn(_ctx(store, key, extra))
    store.commit_stage(key, stage, arrays=out.arrays, record={"status": "committed", "summary": out.summary})
    return out


def test_registered_with_dependencies():
    assert STAGES["register"].applies_to == "followup" and not STAGES["register"].gpu
    assert STAGES["segment_bl"].gpu and STAGES["segment_bl"].applies_to == "all"
    for name in ("segment_bl", "segment_fu"):       # a new channel map or lesion label redoes the stage
        assert {"segment.channel_map", "segment.lesion_label", "suv.clip"} <= set(STAGES[name].params)
    fu = STAGES["segment_fu"]
    assert fu.gpu and fu.requires == ("register",) and fu.needs_baseline == ("segment_bl",)
    assert "suv_clip" in fu.params and fu.applies_to == "followup"


def test_register_then_segment_bl_and_fu(models):
    store = data.make_store("memory://seg-stages", patients=1, followups=1)
    bl_key, fu_key = "P-0000000000-T0", "P-0000000000-T1"
    reg = _run(store, fu_key, "register", register_stage_fn, models)
    assert set(reg.arrays) == {"reg/baseline_pet", "reg/baseline_mask"}
    s = reg.summary
    assert s["mask_source"] == "manual" and s["baseline"] == bl_key and not s["flagged"]
    assert s["qc"]["corr_after"] > s["qc"]["corr_before"]
    # the follow-up phantom is the baseline moved +1 voxel (4 mm) along x: ITK x translation = -4 mm
    assert abs(s["transform"]["parameters"][9] + 4.0) < 4.0 and s["transform"]["translation_mm"] < 8
    json.dumps(s)                                                      # summaries are JSON
    bl = _run(store, bl_key, "segment_bl", segment_bl_stage, models)
    mask = bl.arrays["seg/nnunet_bl"]
    assert mask.shape == data.SHAPE and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    assert bl.summary["folds"] == ["0", "1"] and bl.summary["tta"] is False
    assert bl.summary["channels"] == {"PET": "pet", "CT": "ct"} and bl.summary["lesion_label"] == "lesion"
    assert bl.summary["suv_clip"] == 5.0                               # the run's clip, recorded
    fu = _run(store, fu_key, "segment_fu", segment_fu_stage, models)
    assert fu.arrays["seg/nnunet_fu"].shape == data.SHAPE and fu.summary["baseline_mask_source"] == "manual"
    assert fu.summary["channels"] == {"PET": "pet", "CT": "ct", "PET_BL": "baseline_pet", "noNorm": "baseline_mask"}
    # U-Net_BL's mask as the prior when asked: mapped with the saved transform
    fu2 = segment_fu_stage(_ctx(store, fu_key, {**models, "fu_mask_source": "nnunet_bl"}))
    assert fu2.summary["baseline_mask_source"] == "nnunet_bl"
    with pytest.raises(PetCohortError) as exc:
        segment_fu_stage(_ctx(store, fu_key, {**models, "fu_mask_source": "bogus"}))
    assert exc.value.reason == "BAD_VALUE"
    # U-Net_BL also runs on follow-ups (the paper's comparison)
    assert "seg/nnunet_bl" in segment_bl_stage(_ctx(store, fu_key, models)).arrays


def test_fold_map_selects_held_out_fold(models, tmp_path):
    store = data.make_store("memory://seg-foldmap", patients=1, followups=0)
    key = "P-0000000000-T0"
    fm = tmp_path / "folds.json"
    fm.write_text(json.dumps({"P-0000000000": 1}))
    out = segment_bl_stage(_ctx(store, key, {**models, "fold_map": str(fm)}))
    assert out.summary["folds"] == ["1"]


def test_reasons(models):
    store = data.make_store("memory://seg-reasons", patients=1, followups=1)
    bl_key, fu_key = "P-0000000000-T0", "P-0000000000-T1"
    for fn, key in ((segment_bl_stage, bl_key), (segment_fu_stage, fu_key)):
        with pytest.raises(PetCohortError) as exc:
            fn(_ctx(store, key, {}))
        assert exc.value.reason == "NO_MODEL"
    with pytest.raises(PetCohortError) as exc:            # register not run yet
        segment_fu_stage(_ctx(store, fu_key, models))
    assert exc.value.reason == "NO_REGISTRATION"
    with pytest.raises(PetCohortError) as exc:
        register_stage_fn(_ctx(store, fu_key, {"registration_seed": -1}))
    assert exc.value.reason == "BAD_VALUE"
    bad = dict(models, model_bl=models["model_fu"])       # a 4-channel model given as U-Net_BL
    with pytest.raises(PetCohortError) as exc:
        segment_bl_stage(_ctx(store, bl_key, bad))
    assert exc.value.reason == "MODEL_CHANNELS_MISMATCH" and "'PET_BL' is the baseline_pet input" in exc.value.message
    # a follow-up whose baseline is missing: register and U-Net_FU fail with NO_BASELINE, U-Net_BL runs
    orphan = data.make_store("memory://seg-orphan", patients=1, followups=1)
    ctx = StageContext(store=orphan, key=fu_key, attrs=orphan.study_attrs(fu_key),
                       config=RunConfig(extra=models), baseline_key=None)
    for fn in (register_stage_fn, segment_fu_stage):
        with pytest.raises(PetCohortError) as exc:
            fn(ctx)
        assert exc.value.reason == "NO_BASELINE"
    assert "seg/nnunet_bl" in segment_bl_stage(ctx).arrays


def test_train_refuses_bad_inputs_before_running_nnunet(tmp_path):
    from petcohort.pipelines.train import train

    with pytest.raises(PetCohortError) as exc:
        train(tmp_path, tmp_path / "work", dataset_id=501)
    assert exc.value.reason == "NO_DATASET"
    ds = tmp_path / "Dataset501_PetCohortBL"
    ds.mkdir()
    with pytest.raises(PetCohortError) as exc:
        train(tmp_path, tmp_path / "work", dataset_id=501)
    assert exc.value.reason == "NO_SPLITS"
    (ds / "splits_final.json").write_text(json.dumps([{"train": ["a"], "val": ["b"]}] * 2))
    with pytest.raises(PetCohortError) as exc:
        train(tmp_path, tmp_path / "work", dataset_id=501, folds=(0, 2))
    assert exc.value.reason == "BAD_VALUE" and "0..1" in exc.value.message
