"""nnU-Net adapter (engine/segment/nnunet.py): loading, caching, channel checks, in-process prediction.

Fast tests use a model folder with random weights built in a fixture; the
slow test trains a tiny model with nnU-Net's own planning/preprocessing/trainer
(`petcohort train` backend) and predicts with it.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("nnunetv2", reason="nnunetv2 is not installed: run scripts/install_seg.sh .venv")

import seg_test_data as data
from petcohort.engine.errors import InputError, SegmentationError
from petcohort.engine.segment import nnunet


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return data.make_model_folder(tmp_path_factory.mktemp("nnunet-model"), ("PET", "CT"), folds=(0, 1))


@pytest.fixture(autouse=True)
def _fresh_cache():
    nnunet.clear_cache()
    yield
    nnunet.clear_cache()


def _study(seed=0):
    """One 16^3 crop (= one patch of the tiny model: a single sliding-window tile keeps the tests fast)."""
    pet, ct, manual, _ = data.patient_arrays(np.random.default_rng(seed))
    crop = (slice(2, 18), slice(6, 22), slice(6, 22))
    return np.clip(pet, 0, 5)[crop], ct[crop], manual[crop]


def test_model_info(model_folder):
    info = nnunet.read_model_info(model_folder)
    assert info.channel_names == ("PET", "CT") and info.folds == ("0", "1")
    assert info.configuration == "3d_fullres" and info.labels == {"background": 0, "lesion": 1}
    assert info.normalization == ("ZScoreNormalization", "CTNormalization")


def test_predict_shape_dtype_cache_and_ensemble(model_folder):
    pet, ct, _ = _study()
    m = nnunet.get_model(model_folder, device="cpu")
    assert nnunet.get_model(model_folder, device="cpu") is m          # cached per process
    assert nnunet.get_model(model_folder, folds=[0], device="cpu") is not m
    seg = nnunet.predict(model_folder, [pet, ct], data.SPACING, channel_names=["PET", "CT"], tta=False)
    assert seg.shape == pet.shape and seg.dtype == np.uint8 and set(np.unique(seg)) <= {0, 1}
    again = nnunet.predict(model_folder, [pet, ct], data.SPACING, tta=False)
    assert np.array_equal(seg, again)                                   # deterministic in-process
    assert nnunet.get_model(model_folder, device="cpu") is m
    assert m.folds == ("0", "1") and len(m._predictor.list_of_parameters) == 2   # one 2-fold ensemble
    f0 = nnunet.predict(model_folder, [pet, ct], data.SPACING, folds=[0], tta=False)
    f1 = nnunet.predict(model_folder, [pet, ct], data.SPACING, folds=[1], tta=False)
    assert not np.array_equal(f0, f1)                                  # the folds' weights differ
    tta = nnunet.predict(model_folder, [pet, ct], data.SPACING, tta=True, tile_step=1.0)
    assert tta.shape == pet.shape


def test_channel_mismatch_names_expected_and_given(model_folder):
    pet, ct, _ = _study()
    with pytest.raises(SegmentationError) as exc:
        nnunet.predict(model_folder, [pet], data.SPACING)
    assert exc.value.reason == "MODEL_CHANNELS_MISMATCH"
    assert "['PET', 'CT']" in exc.value.message and "got 1" in exc.value.message
    with pytest.raises(SegmentationError) as exc:
        nnunet.predict(model_folder, [ct, pet], data.SPACING, channel_names=["CT", "PET"])
    assert exc.value.reason == "MODEL_CHANNELS_MISMATCH" and "['CT', 'PET']" in exc.value.message
    with pytest.raises(InputError) as exc:
        nnunet.predict(model_folder, [pet, ct[:-1]], data.SPACING)
    assert exc.value.reason == "GRID_MISMATCH"
    with pytest.raises(InputError):
        nnunet.predict(model_folder, [pet, ct], [4.0, 0.0, 4.0])


def test_empty_or_constant_image_is_refused(model_folder):
    pet, ct, _ = _study()
    for blank in (np.zeros_like(pet), np.full_like(pet, 2.5)):       # empty, constant PET
        with pytest.raises(InputError) as exc:
            nnunet.predict(model_folder, [blank, ct], data.SPACING, tta=False)
        assert exc.value.reason == "CONSTANT_IMAGE" and "'PET'" in exc.value.message
    ct_flat = np.full_like(ct, 40)                                       # CT inside soft tissue: fine
    assert nnunet.predict(model_folder, [pet, ct_flat], data.SPACING, tta=False).shape == pet.shape


def test_incomplete_folders(model_folder, tmp_path):
    with pytest.raises(SegmentationError) as exc:
        nnunet.get_model(tmp_path / "nope")
    assert exc.value.reason == "MODEL_INCOMPLETE"
    broken = tmp_path / "m" / "nnUNetTrainer__P__3d_fullres"
    shutil.copytree(model_folder, broken)
    with pytest.raises(SegmentationError) as exc:
        nnunet.get_model(broken, folds=[3])
    assert exc.value.reason == "MODEL_INCOMPLETE" and "folds ['3']" in exc.value.message
    for f in ("0", "1"):
        os.remove(broken / f"fold_{f}" / "checkpoint_final.pth")
    with pytest.raises(SegmentationError) as exc:
        nnunet.get_model(broken)
    assert exc.value.reason == "MODEL_INCOMPLETE" and "fold_<k>" in exc.value.message
    os.remove(broken / "plans.json")
    with pytest.raises(SegmentationError) as exc:
        nnunet.read_model_info(broken)
    assert exc.value.reason == "MODEL_INCOMPLETE" and "plans.json" in exc.value.message
    bad = tmp_path / "bad" / "nnUNetTrainer__P__3d_fullres"
    shutil.copytree(model_folder, bad)
    (bad / "fold_0" / "checkpoint_final.pth").write_bytes(b"truncated")
    with pytest.raises(SegmentationError) as exc:
        nnunet.get_model(bad, folds=[0])
    assert exc.value.reason == "MODEL_INCOMPLETE"
    import torch

    torch.save({"weights": {}}, bad / "fold_1" / "checkpoint_final.pth")
    with pytest.raises(SegmentationError) as exc:
        nnunet.get_model(bad, folds=[1])
    assert exc.value.reason == "MODEL_INCOMPLETE" and "not an nnU-Net checkpoint" in exc.value.message


def test_check_model_and_foreign_checkpoints(model_folder, tmp_path):
    info = nnunet.check_model(model_folder)
    assert info.channel_names == ("PET", "CT") and nnunet.check_model(model_folder, folds=[1]).folds == ("0", "1")
    with pytest.raises(SegmentationError) as exc:
        nnunet.check_model(model_folder, folds=[2])
    assert exc.value.reason == "MODEL_INCOMPLETE"
    # a checkpoint trained for 3 channels in a folder whose dataset.json/plans describe 2
    other = data.make_model_folder(tmp_path / "other", ("PET", "CT", "PET_BL"), folds=(0,))
    foreign = tmp_path / "foreign" / "nnUNetTrainer__P__3d_fullres"
    shutil.copytree(model_folder, foreign)
    shutil.copy(os.path.join(other, "fold_0", "checkpoint_final.pth"), foreign / "fold_0" / "checkpoint_final.pth")
    for call in (lambda: nnunet.check_model(foreign), lambda: nnunet.get_model(foreign, folds=[0])):
        with pytest.raises(SegmentationError) as exc:
            call()
        assert exc.value.reason == "MODEL_ARCHITECTURE_MISMATCH" and "fold_0/checkpoint_final.pth" in exc.value.message
        assert "4 of another shape" in exc.value.message                 # the first convolution, 4 names
    assert nnunet.check_model(foreign, folds=[1]).folds == ("0", "1")    # fold 1 is still this network's


def test_bad_device(model_folder):
    with pytest.raises(InputError):
        nnunet.get_model(model_folder, device="tpu")


@pytest.mark.slow
def test_train_tiny_model_then_predict(tmp_path_factory):
    """nnU-Net's own fingerprint/plan/preprocess/train on 5 tiny patients, then in-process prediction."""
    base = tmp_path_factory.mktemp("nnunet-train")
    folder = data.train_tiny_model(base)
    summary = json.loads((base / "summary.json").read_text())
    assert summary["plan"]["patch_size"] == [16, 16, 16] or summary["plan"]["patch_size"] == (16, 16, 16)
    assert summary["validation"]["0"]["cases"]                     # fold 0 validated on its held-out patient
    with open(os.path.join(folder, "plans.json")) as fh:
        plans = json.load(fh)
    cfg = plans["configurations"]["3d_fullres"]
    assert cfg["architecture"]["arch_kwargs"]["features_per_stage"][0] == 4 and cfg["batch_size"] == 2
    assert cfg["normalization_schemes"] == ["ZScoreNormalization", "CTNormalization"]
    pet, ct, _ = _study(5)
    seg = nnunet.predict(folder, [pet, ct], data.SPACING, channel_names=["PET", "CT"], folds=[0])
    assert seg.shape == pet.shape and seg.dtype == np.uint8


def test_train_plan_validation():
    assert nnunet.TrainPlan().patch_size == (48, 48, 48)
    for bad in ({"batch_size": 0}, {"patch_size": (4, 48, 48)}, {"target_spacing": (4.0, 0.0, 4.0)},
                {"epochs": 1.5}):
        with pytest.raises(InputError) as exc:
            nnunet.TrainPlan(**bad)
        assert exc.value.reason == "BAD_VALUE"


DEMO = os.path.join(os.path.dirname(__file__), "..", "..", "models", "demo")


@pytest.mark.parametrize(("dataset", "channels"), [("Dataset501_PetCohortBL", ("PET", "CT")),
                                                   ("Dataset502_PetCohortFU", ("PET", "CT", "PET_BL", "noNorm"))])
def test_demo_models_load_with_documented_channels(dataset, channels):
    folder = os.path.join(DEMO, dataset, "nnUNetTrainer__PetCohortPlans__3d_fullres")
    if not os.path.isdir(folder):
        pytest.skip(f"demo model {dataset} not trained (models/train_demo.py)")
    model = nnunet.get_model(folder, device="cpu")
    assert model.info.channel_names == channels and model.folds == ("0",)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs)
    assert size < 5_000_000                                        # models/demo stays <= 10 MB in all

