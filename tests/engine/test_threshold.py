"""Fixed, relative (41%) and PERCIST-adaptive thresholds with organ exclusion."""
from __future__ import annotations

import numpy as np
import pytest

from petcohort.engine.errors import GridError, InputError
from petcohort.engine.segment.threshold import fixed, percist_adaptive, percist_level, relative


def _pet():
    pet = np.full((6, 6, 12), 1.0, np.float32)
    pet[2:4, 2:4, 1:3] = 3.0          # region 1: max 3 -> 41% = 1.23 -> all seed voxels kept
    pet[2:4, 2:4, 6:10] = 4.0         # region 2: max 20 -> 41% = 8.2
    pet[2, 2, 7] = 20.0
    pet[3, 3, 8] = 9.0
    return pet


def test_fixed_and_exclude():
    pet = _pet()
    m = fixed(pet, 2.5)
    assert m.dtype == np.uint8 and m.sum() == 8 + 16
    ex = np.zeros(pet.shape, np.uint8)
    ex[:, :, :5] = 1
    assert fixed(pet, 2.5, exclude=ex).sum() == 16
    assert fixed(pet, 3.0).sum() == 24   # >= level


def test_relative_per_region():
    pet = _pet()
    m = relative(pet, 0.41, seed_level=2.5)
    assert m[2:4, 2:4, 1:3].all()           # low-max region keeps its seed voxels
    assert m[:, :, 5:].sum() == 2           # only 20 and 9 are >= 8.2 in region 2
    assert m[2, 2, 7] and m[3, 3, 8]
    # never grows beyond the seed mask
    assert not (m & (fixed(pet, 2.5) == 0)).any()
    ex = np.zeros(pet.shape, np.uint8)
    ex[2, 2, 7] = 1                         # excluding the 20 lowers region 2's max to 9 -> 3.69
    m2 = relative(pet, 0.41, exclude=ex)
    assert m2[2, 2, 7] == 0 and m2[:, :, 5:].sum() == 15
    assert relative(np.ones((3, 3, 3), np.float32)).sum() == 0


def test_percist():
    assert percist_level(2.0, 0.3) == pytest.approx(3.6)
    sul = np.full((3, 3, 3), 3.5, np.float32)
    sul[1, 1, 1] = 3.6
    assert percist_adaptive(sul, 2.0, 0.3).sum() == 1
    with pytest.raises(InputError):
        percist_level(0, 0.3)
    with pytest.raises(InputError):
        percist_level(2.0, -1)


def test_percist_level_follows_the_reference_source():
    # Wahl 2009: liver 1.5 x mean + 2 SD; blood pool 2.0 x mean + 2 SD
    assert percist_level(2.0, 0.3, source="liver") == pytest.approx(3.6)
    assert percist_level(2.0, 0.3, source="blood_pool") == pytest.approx(4.6)
    sul = np.full((3, 3, 3), 3.6, np.float32)
    sul[1, 1, 1] = 4.6
    sul[0, 0, 0] = 4.59
    assert percist_adaptive(sul, 2.0, 0.3).sum() == 27
    bp = percist_adaptive(sul, 2.0, 0.3, source="blood_pool")
    assert bp.sum() == 1 and bp[1, 1, 1] == 1
    with pytest.raises(InputError) as err:
        percist_level(2.0, 0.3, source="spleen")
    assert err.value.reason == "BAD_VALUE"


def test_errors():
    pet = _pet()
    with pytest.raises(GridError):
        fixed(pet, 2.5, exclude=np.zeros((2, 2, 2)))
    bad = pet.copy()
    bad[0, 0, 0] = np.inf
    with pytest.raises(InputError) as e:
        relative(bad)
    assert e.value.reason == "IMAGE_NOT_FINITE"
    with pytest.raises(InputError):
        relative(pet, 1.5)
