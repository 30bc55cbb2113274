"""Connected-component labelling: cc3d vs scipy.ndimage on the same connectivity."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
from hypothesis import given, settings
from hypothesis import strategies as st

from petcohort.engine.errors import InputError
from petcohort.engine.kernels.label import label, structure


def test_hand_connectivities():
    m = np.zeros((3, 3, 3), np.uint8)
    m[0, 0, 0] = 1
    m[0, 1, 1] = 1   # edge neighbour of (0,0,0)
    m[1, 2, 2] = 1   # corner neighbour of (0,1,1)
    assert label(m, connectivity=6)[1] == 3
    assert label(m, connectivity=18)[1] == 2
    assert label(m, connectivity=26)[1] == 1
    labels, n = label(m)
    assert n == 1 and labels.dtype == np.int32 and set(np.unique(labels)) == {0, 1}


def test_empty_and_errors():
    labels, n = label(np.zeros((2, 2, 2)))
    assert n == 0 and not labels.any()
    with pytest.raises(InputError) as e:
        label(np.zeros((2, 2, 2)), connectivity=8)
    assert e.value.reason == "BAD_CONNECTIVITY"
    with pytest.raises(InputError) as e:
        label(np.zeros((2, 2)))
    assert e.value.reason == "NOT_3D"


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.sampled_from([6, 18, 26]), st.floats(0.1, 0.6))
def test_same_partition_as_scipy(seed, connectivity, density):
    rng = np.random.default_rng(seed)
    m = rng.random((7, 8, 9)) < density
    ours, n = label(m, connectivity=connectivity)
    ref, nr = ndi.label(m, structure=structure(connectivity))
    assert n == nr
    # same partition: a one-to-one mapping between label ids
    pairs = set(zip(ours[m].tolist(), ref[m].tolist()))
    assert len(pairs) == n
    assert len({a for a, _ in pairs}) == n and len({b for _, b in pairs}) == n


def test_bounding_box_of_the_non_zero_voxels():
    from petcohort.engine.kernels.label import bounding_box

    mask = np.zeros((5, 6, 7), np.int32)
    assert bounding_box(mask) is None
    mask[1, 2, 3] = 4
    mask[3, 2, 6] = -1                      # any non-zero value counts
    assert bounding_box(mask) == (slice(1, 4), slice(2, 3), slice(3, 7))
    assert bounding_box(mask != 0) == bounding_box(mask)
