"""The ``threshold`` stage's PERCIST-adaptive mask uses the level of the reference actually used."""
from __future__ import annotations

import uuid

import numpy as np
import pytest

from petcohort.pipelines.config import RunConfig
from petcohort.pipelines.stage_threshold import threshold_stage
from petcohort.pipelines.stages import StageContext
from petcohort.storage._backends import forget_memory_store
from petcohort.storage.store import CohortStore

KEY = "P-00000000cc-T0"
SHAPE = (16, 16, 16)


def _arrays(liver: str) -> dict[str, np.ndarray]:
    """SUL 0.5 background, a uniform blood pool of SUL 1.0 (SD 0) and hot voxels at 1.8 and 2.1.

    With the blood pool the level is 2.0 x 1.0 + 2 x 0 = 2.0 (only the 2.1 voxel);
    the liver rule would give 1.5 and wrongly keep the 1.8 voxel too.
    """
    pet = np.full(SHAPE, 0.5, np.float32)
    aorta = np.zeros(SHAPE, np.uint8)
    aorta[2:14, 4:9, 4:9] = 1                      # 20 mm wide tube along Z (4 mm voxels)
    pet[aorta == 1] = 1.0
    pet[8, 13, 13] = 2.1
    pet[3, 13, 13] = 1.8
    arrays = {"pet": pet, "organs/aorta": aorta}
    if liver == "tiny":                            # no room for a 3 cm sphere: LIVER_NO_ROOM fallback
        tiny = np.zeros(SHAPE, np.uint8)
        tiny[12:14, 12:14, 2:4] = 1
        arrays["organs/liver"] = tiny
    return arrays


@pytest.fixture
def store():
    name = f"thr-percist-{uuid.uuid4().hex[:10]}"
    s = CohortStore.create(f"memory://{name}")
    yield s
    forget_memory_store(name)


@pytest.mark.parametrize("liver, fallback", [("none", "NO_LIVER_MASK"), ("tiny", "LIVER_NO_ROOM")])
def test_blood_pool_reference_uses_the_blood_pool_level(store, liver, fallback):
    store.add_study(KEY, {"spacing": [4.0, 4.0, 4.0], "origin": [0.0, 0.0, 0.0], "timepoint": 0,
                          "sul_per_suvbw": 1.0})
    store.write_arrays(KEY, _arrays(liver))
    out = threshold_stage(StageContext(store=store, key=KEY, attrs=store.study_attrs(KEY), config=RunConfig()))
    s = out.summary["threshold_percist"]
    assert s["reference"]["source"] == "blood_pool" and s["reference"]["fallback_reason"] == fallback
    assert s["reference"]["mean"] == pytest.approx(1.0) and s["reference"]["sd"] == pytest.approx(0.0)
    assert s["level_sul"] == pytest.approx(2.0) and s["level_rule"] == "2 x blood_pool mean + 2 x SD"
    mask = out.arrays["seg/threshold_percist"]
    assert mask.sum() == 1 and mask[8, 13, 13] == 1 and mask[3, 13, 13] == 0


def test_no_liver_and_no_aorta_is_a_reason(store):
    store.add_study(KEY, {"spacing": [4.0, 4.0, 4.0], "origin": [0.0, 0.0, 0.0], "timepoint": 0,
                          "sul_per_suvbw": 1.0})
    store.write_arrays(KEY, {"pet": _arrays("none")["pet"]})
    out = threshold_stage(StageContext(store=store, key=KEY, attrs=store.study_attrs(KEY), config=RunConfig()))
    assert out.summary["threshold_percist_reason"] == "NO_LIVER_MASK"
    assert "seg/threshold_percist" not in out.arrays


def _noisy_liver_study(rng) -> dict[str, np.ndarray]:
    """A large liver of SUL ~ N(2.2, 0.25): a tenth of its voxels are above 2.5 (noise, not disease), and one
    hot metastasis (SUL 6, 12 mm across) in it."""
    shape = (40, 40, 40)
    pet = np.full(shape, 0.3, np.float32)
    liver = np.zeros(shape, np.uint8)
    liver[4:36, 4:36, 4:36] = 1
    pet[liver == 1] = rng.normal(2.2, 0.25, int(liver.sum())).astype(np.float32)
    pet[8:11, 8:11, 8:11] = 6.0
    return {"pet": pet, "organs/liver": liver}


def test_liver_sphere_avoids_the_liver_lesion_not_its_noise(store):
    """PERCIST's sphere lies in normal liver away from lesions: the SUV 2.5 cut marks a tenth of this normal
    liver and left no room (blood-pool fallback); the whole liver's robust level marks only the metastasis."""
    from petcohort.engine.errors import InputError
    from petcohort.engine.kernels.reference import liver_reference
    from petcohort.engine.segment.threshold import MAD_TO_SD, percist_liver_hot

    rng = np.random.default_rng(3)
    arrays = _noisy_liver_study(rng)
    liver, pet = arrays["organs/liver"] != 0, arrays["pet"]
    hot, level = percist_liver_hot(pet, arrays["organs/liver"])
    median = float(np.median(pet[liver].astype(np.float64)))
    mad = float(np.median(np.abs(pet[liver].astype(np.float64) - median)))
    assert level == pytest.approx(1.5 * median + 2 * MAD_TO_SD * mad, rel=1e-12)
    assert hot.dtype == np.uint8 and hot[8:11, 8:11, 8:11].all()                # the metastasis ...
    assert int(hot.sum()) == 27                                                 # ... and nothing else
    assert (pet[liver] >= 2.5).mean() > 0.1
    with pytest.raises(InputError) as exc:             # the SUV 2.5 cut as the lesions: no room, no aorta
        liver_reference(pet, arrays["organs/liver"], spacing=(4.0, 4.0, 4.0), lesions=pet >= 2.5)
    assert exc.value.reason == "NO_REFERENCE"
    assert percist_liver_hot(pet, np.zeros_like(arrays["organs/liver"])) is None  # no liver, no level
    exclude = np.zeros(pet.shape, bool)
    exclude[8:11, 8:11, 8:11] = True
    assert percist_liver_hot(pet, arrays["organs/liver"], exclude=exclude)[0].sum() == 0

    store.add_study(KEY, {"spacing": [4.0, 4.0, 4.0], "origin": [0.0, 0.0, 0.0], "timepoint": 0,
                          "sul_per_suvbw": 1.0})
    store.write_arrays(KEY, arrays)
    out = threshold_stage(StageContext(store=store, key=KEY, attrs=store.study_attrs(KEY), config=RunConfig()))
    s = out.summary["threshold_percist"]
    assert s["reference"]["source"] == "liver", s["reference"]
    assert s["reference_avoids"]["level_sul"] == pytest.approx(level, rel=1e-12)
    assert s["reference_avoids"]["rule"] == "SUL >= 1.5 x liver median + 2 x 1.4826 x liver MAD"
    centre = np.array(s["reference"]["centre_zyx"])
    gap_mm = 4.0 * float(np.min(np.linalg.norm(np.argwhere(hot) - centre, axis=1)))
    assert gap_mm > 15.0 + 10.0 - 4.0 * np.sqrt(3)          # radius + margin from the metastasis (voxel-rounded)
    assert s["reference"]["mean"] == pytest.approx(2.2, abs=0.05)
