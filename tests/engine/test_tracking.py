"""Tests of lesion tracking (overlap, split/merge, distance assignment)."""
from __future__ import annotations

import numpy as np
import pytest

from petcohort.engine.errors import InputError
from petcohort.engine.stats.tracking import centroids_mm, match_centroids, match_lesions, summarise

SP = (2.0, 2.0, 2.0)
SHAPE = (10, 10, 40)


def grid():
    return np.zeros(SHAPE, np.int32)


def statuses(matches):
    return [(m.baseline_lesion, m.followup_lesion, m.status) for m in matches]


def test_identical_lesion_persists():
    bl = grid()
    bl[2:5, 2:5, 2:5] = 1
    m = match_lesions(bl, 1, bl.copy(), 1, spacing=SP)
    assert statuses(m) == [(1, 1, "persisting")]
    assert m[0].distance_mm == 0.0 and m[0].iou == 1.0


def test_shifted_overlap_and_label_permutation():
    bl, fu = grid(), grid()
    bl[2:5, 2:5, 2:5] = 1
    bl[2:5, 2:5, 20:23] = 2
    fu[2:5, 2:5, 21:24] = 1  # baseline 2 moved by 1 voxel (2 mm)
    fu[2:5, 2:5, 3:6] = 2  # baseline 1 moved by 1 voxel
    m = match_lesions(bl, 2, fu, 2, spacing=SP)
    assert statuses(m) == [(1, 2, "persisting"), (2, 1, "persisting")]
    assert m[0].distance_mm == pytest.approx(2.0)
    assert m[0].iou == pytest.approx(18 / 36)


def test_vanished_and_new_beyond_distance():
    bl, fu = grid(), grid()
    bl[2:4, 2:4, 2:4] = 1
    fu[2:4, 2:4, 30:32] = 1  # 56 mm away
    m = match_lesions(bl, 1, fu, 1, spacing=SP, max_distance_mm=20.0)
    assert statuses(m) == [(1, None, "vanished"), (None, 1, "new")]
    s = summarise(m)
    assert (s["n_new"], s["n_vanished"], s["n_persisting"]) == (1, 1, 0)


def test_distance_match_without_overlap():
    bl, fu = grid(), grid()
    bl[2:4, 2:4, 2:4] = 1
    fu[2:4, 2:4, 8:10] = 1  # 6 voxels = 12 mm
    m = match_lesions(bl, 1, fu, 1, spacing=SP, max_distance_mm=20.0)
    assert statuses(m) == [(1, 1, "persisting")]
    assert m[0].distance_mm == pytest.approx(12.0) and m[0].iou is None


def test_small_remnant_inside_shrinking_lesion_persists():
    bl, fu = grid(), grid()
    bl[1:6, 1:6, 1:6] = 1  # 125 voxels
    fu[3, 3, 3] = 1  # IoU 1/125 < 0.1 but overlap coefficient 1
    m = match_lesions(bl, 1, fu, 1, spacing=SP, overlap_min=0.1)
    assert statuses(m) == [(1, 1, "persisting")]


def test_split_is_not_new():
    bl, fu = grid(), grid()
    bl[4, 4, 2:20] = 1
    fu[4, 4, 2:8] = 1  # two fragments of the baseline bar
    fu[4, 4, 12:20] = 2
    m = match_lesions(bl, 1, fu, 2, spacing=SP)
    assert statuses(m) == [(1, 1, "split"), (1, 2, "persisting")]  # larger IoU persists
    s = summarise(m)
    assert (s["n_new"], s["n_vanished"], s["n_persisting"], s["n_split"]) == (0, 0, 1, 1)


def test_merge_is_not_vanished():
    bl, fu = grid(), grid()
    bl[4, 4, 2:8] = 1
    bl[4, 4, 12:20] = 2
    fu[4, 4, 2:20] = 1
    m = match_lesions(bl, 2, fu, 1, spacing=SP)
    assert statuses(m) == [(1, 1, "merged"), (2, 1, "persisting")]
    s = summarise(m)
    assert (s["n_new"], s["n_vanished"], s["n_merged"]) == (0, 0, 1)


def test_distance_assignment_is_optimal_not_greedy():
    # greedy nearest would pair baseline 2 (x=10) with follow-up 1 (x=6, 4 mm) and
    # leave baseline 1 with follow-up 2 (16 mm): total 20 mm; optimal is 6 + 6 = 12 mm
    bl = [[0, 0, 0], [0, 0, 10]]
    fu = [[0, 0, 6], [0, 0, 16]]
    m = match_centroids(bl, fu, max_distance_mm=20.0)
    assert statuses(m) == [(1, 1, "persisting"), (2, 2, "persisting")]
    assert [x.distance_mm for x in m] == [pytest.approx(6.0), pytest.approx(6.0)]
    # the limit is inclusive of max_distance_mm only
    assert statuses(match_centroids([[0, 0, 0]], [[0, 0, 20.5]], max_distance_mm=20.0)) == [
        (1, None, "vanished"), (None, 1, "new")]
    assert match_centroids(np.zeros((0, 3)), np.zeros((0, 3))) == []


def test_centroids_mm_uses_spacing_and_origin():
    lab = grid()
    lab[2, 3, 4:6] = 1
    c = centroids_mm(lab, 1, spacing=(3.0, 2.0, 1.0), origin=(10.0, 20.0, 30.0))
    assert c.tolist() == [[16.0, 26.0, 34.5]]


def test_empty_and_bad_inputs():
    assert match_lesions(grid(), 0, grid(), 0, spacing=SP) == []
    with pytest.raises(InputError) as err:
        match_lesions(grid(), 0, np.zeros((3, 3, 3), np.int32), 0, spacing=SP)
    assert err.value.reason == "GRID_MISMATCH"
    lab = grid()
    lab[0, 0, 0] = 2
    with pytest.raises(InputError) as err:
        match_lesions(lab, 1, grid(), 0, spacing=SP)
    assert err.value.reason == "BAD_VALUE"
    with pytest.raises(InputError):
        match_lesions(grid(), 0, grid(), 0, spacing=SP, overlap_min=0)


def _brute(bl, fu, limit):
    """Max-cardinality, then min-total-distance matching by enumeration (tiny inputs)."""
    import itertools

    d = np.sqrt(((np.asarray(bl)[:, None] - np.asarray(fu)[None]) ** 2).sum(-1))
    best = (0, 0.0)
    for k in range(1, min(len(bl), len(fu)) + 1):
        for rows in itertools.combinations(range(len(bl)), k):
            for cols in itertools.permutations(range(len(fu)), k):
                if all(d[r, c] <= limit for r, c in zip(rows, cols)):
                    cost = sum(d[r, c] for r, c in zip(rows, cols))
                    if (k, -cost) > (best[0], -best[1]):
                        best = (k, cost)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_distance_assignment_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    bl = rng.uniform(0, 40, size=(rng.integers(0, 5), 3))
    fu = rng.uniform(0, 40, size=(rng.integers(0, 5), 3))
    m = match_centroids(bl, fu, max_distance_mm=20.0)
    pairs = [x for x in m if x.status == "persisting"]
    k, cost = _brute(bl, fu, 20.0)
    assert len(pairs) == k
    assert sum(x.distance_mm for x in pairs) == pytest.approx(cost, abs=1e-9)
    assert {x.baseline_lesion for x in m} - {None} == set(range(1, len(bl) + 1))
    assert {x.followup_lesion for x in m} - {None} == set(range(1, len(fu) + 1))
