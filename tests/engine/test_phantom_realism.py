"""A generated study against the phantom realism targets (engine/phantom/tissues.py) (SUV, HU, noise, lesions)."""
from __future__ import annotations

import numpy as np
import pytest
from petcohort.engine.phantom.design import design_patient
from petcohort.engine.phantom.study import simulate_study
from petcohort.engine.phantom.tissues import T
from scipy import ndimage as ndi


@pytest.fixture(scope="module", params=[0, 1])
def study(request):
    # full-size bodies on a 6 mm grid: realistic anatomy, ~1 M voxels
    design = design_patient(11, request.param, sites=2)
    return design, simulate_study(design, 0, seed=11, voxel_mm=6.0)


def _core(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    if iterations == 0:  # scipy treats 0 as "erode until nothing changes"
        return mask.astype(bool)
    return ndi.binary_erosion(mask.astype(bool), iterations=iterations)


def test_shapes_and_types(study):
    _, s = study
    assert s.pet.dtype == np.float32 and s.ct.dtype == np.int16
    assert s.lesion_ids.dtype == np.uint16
    for name, m in s.masks.items():
        assert m.dtype == np.uint8 and m.shape == s.pet.shape, name
        assert set(np.unique(m)) <= {0, 1}
    assert np.array_equal(s.masks["seg/manual"] > 0, s.lesion_ids > 0)
    # skull vertex to mid-thigh: ~90-110 cm for 1.50-1.85 m
    assert 850 <= s.grid.shape[0] * s.grid.spacing[0] <= 1150


def test_suv_targets(study):
    _, s = study
    clean, ids = s.pet_clean, s.lesion_ids
    nolesion = ids == 0
    liver = _core(s.masks["organs/liver"], 2) & nolesion
    assert 1.3 <= float(s.pet[liver].mean()) <= 2.8, float(s.pet[liver].mean())
    brain = s.masks["organs/brain"] > 0
    assert float(np.percentile(clean[brain], 95)) > 6.0
    # bladder: the hottest structure outside the brain and the lesions
    body = ~brain & nolesion & ~ndi.binary_dilation(ids > 0, iterations=2)
    hot = np.unravel_index(np.argmax(np.where(body, clean, 0)), clean.shape)
    assert s.masks["organs/bladder"][hot] == 1
    lung = _core(s.classes == T.LUNG, 2)
    assert float(clean[lung].mean()) < 0.8
    muscle = _core(s.classes == T.MUSCLE, 1)
    assert 0.5 <= float(np.median(clean[muscle])) <= 1.1
    # physiological hot spots above SUV 2.5 (what makes a fixed threshold fail)
    for organ in ("brain", "kidneys", "bladder"):
        assert clean[s.masks[f"organs/{organ}"] > 0].max() > 2.5, organ


def test_ct_targets(study):
    _, s = study
    ct, cls = s.ct.astype(float), s.classes
    nolesion = s.lesion_ids == 0

    def med(code, it=1):
        return float(np.median(ct[_core(cls == code, it) & nolesion]))

    assert -900 <= med(T.LUNG, 2) <= -700
    assert -120 <= med(T.FAT, 0) <= -80
    assert 50 <= med(T.LIVER, 2) <= 70
    assert 150 <= med(T.RED_MARROW, 0) <= 400
    assert 700 <= med(T.CORTICAL, 0) <= 1200
    assert 30 <= med(T.MUSCLE) <= 60
    assert float(np.median(ct[cls == T.AIR])) < -950


def test_noise_cov_in_liver(study):
    _, s = study
    liver = _core(s.masks["organs/liver"], 2) & (s.lesion_ids == 0)
    cov = float(s.pet[liver].std() / s.pet[liver].mean())
    assert 0.08 <= cov <= 0.20
    # the noise alone has the scanner/BMI target CoV
    noise = float((s.pet - s.pet_clean)[liver].std() / s.pet_clean[liver].mean())
    assert noise == pytest.approx(s.cov_liver, rel=0.15)


def test_lesions_in_truth(study):
    _, s = study
    assert s.lesions, "every baseline has at least one lesion"
    ids = {les["id"] for les in s.lesions}
    assert ids == set(np.unique(s.lesion_ids[s.lesion_ids > 0]).tolist())
    for les in s.lesions:
        # 2-15 at 60 min, times the uptake-time factor (50-75 min)
        assert 1.9 <= les["suv_true"] <= 16.0
        assert les["volume_ml"] > 0
        if les["organ"] == "bone":
            vox = s.lesion_ids == les["id"]
            assert s.masks["organs/bone"][vox].all()
        if les["organ"] == "liver":
            assert s.masks["organs/liver"][s.lesion_ids == les["id"]].all()
    # the dominant lesion is clearly visible after blur
    hottest = max(s.lesions, key=lambda les: les["suv_true"])
    assert s.pet_clean[s.lesion_ids == hottest["id"]].max() > 2.5
