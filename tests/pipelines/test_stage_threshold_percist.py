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
