"""The lesion-voxel (sparse) reductions of tracking and PERCIST equal whole-volume ones bit for bit.

``match_lesions``, ``centroids_mm``, ``lesion_truth_ids``, ``organ_of_lesions``
and ``assess_scan`` reduce over the non-zero voxels only; these tests hold them
to the whole-volume formulas they replaced (same float64 rounding).
"""
from __future__ import annotations

import numpy as np
import pytest

from petcohort.engine.errors import InputError
from petcohort.engine.kernels.label import label
from petcohort.engine.kernels.lesions import lesion_organs
from petcohort.engine.kernels.reference import liver_reference, liver_site
from petcohort.engine.stats.percist import assess_scan, organ_of_lesions
from petcohort.engine.stats.tracking import centroids_mm, lesion_voxels, match_lesions
from petcohort.engine.stats.tracking_accuracy import lesion_truth_ids

SHAPE = (40, 48, 56)
SPACING = (2.5, 2.036, 2.036)


def _labels(seed: int, density: float = 0.04) -> tuple[np.ndarray, int]:
    rng = np.random.default_rng(seed)
    mask = rng.random(SHAPE) < density
    mask[:, :, :5] = False  # some labels away from the border, none in these planes
    labels, n = label(mask, connectivity=26)
    return labels.astype(np.int32), int(n)


def _whole_volume_centroids(labels: np.ndarray, n: int) -> np.ndarray:
    """The previous whole-volume formula: bincount of broadcast voxel indices over every voxel."""
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:n + 1].astype(np.float64)
    idx = np.indices(labels.shape, sparse=True)
    out = np.empty((n, 3))
    for axis in range(3):
        coord = np.broadcast_to(idx[axis], labels.shape).ravel()
        sums = np.bincount(labels.ravel(), weights=coord, minlength=n + 1)[1:n + 1]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, axis] = sums / counts
    return out * np.asarray(SPACING)


def test_lesion_voxels_are_the_nonzero_voxels_in_c_order():
    labels, _ = _labels(0)
    idx, values = lesion_voxels(labels)
    assert np.array_equal(idx, np.flatnonzero(labels))
    assert np.array_equal(values, labels.ravel()[idx])


@pytest.mark.parametrize("seed", [0, 1])
def test_centroids_equal_whole_volume_formula(seed):
    labels, n = _labels(seed)
    labels[labels == 3] = 0  # an empty label: NaN row in both
    got = centroids_mm(labels, n, spacing=SPACING)
    want = _whole_volume_centroids(labels, n)
    assert np.array_equal(got, want, equal_nan=True)
    assert np.isnan(got[2]).all()


def test_match_lesions_numbers_equal_whole_volume_formulas():
    bl, nbl = _labels(2)
    fu, nfu = _labels(3)
    matches = match_lesions(bl, nbl, fu, nfu, spacing=SPACING, max_distance_mm=8.0, overlap_min=0.1)
    c_b, c_f = _whole_volume_centroids(bl, nbl), _whole_volume_centroids(fu, nfu)
    size_b = np.bincount(bl.ravel(), minlength=nbl + 1).astype(np.float64)
    size_f = np.bincount(fu.ravel(), minlength=nfu + 1).astype(np.float64)
    paired = [m for m in matches if m.baseline_lesion is not None and m.followup_lesion is not None]
    assert any(m.iou is not None for m in paired) and any(m.iou is None for m in paired)
    for m in paired:
        a, b = m.baseline_lesion, m.followup_lesion
        if m.iou is None:  # distance pass: the k-d tree's own arithmetic on the (identical) centroids
            assert m.distance_mm == pytest.approx(float(np.linalg.norm(c_b[a - 1] - c_f[b - 1])), rel=1e-12)
            continue
        assert m.distance_mm == float(np.linalg.norm(c_b[a - 1] - c_f[b - 1]))
        inter = float(np.count_nonzero((bl == a) & (fu == b)))
        assert m.iou == inter / (size_b[a] + size_f[b] - inter)
    # every lesion appears at least once
    assert {m.baseline_lesion for m in matches} - {None} == set(range(1, nbl + 1))
    assert {m.followup_lesion for m in matches} - {None} == set(range(1, nfu + 1))


def test_match_lesions_bad_label_count():
    bl, nbl = _labels(4)
    with pytest.raises(InputError) as err:
        match_lesions(bl, nbl - 1, bl, nbl, spacing=SPACING)
    assert err.value.reason == "BAD_VALUE" and f"max label {nbl}" in err.value.message


def test_lesion_truth_ids_equal_whole_volume_formula():
    labels, n = _labels(5)
    truth, _ = _labels(6, density=0.2)
    got = lesion_truth_ids(labels, n, truth)
    both = (labels > 0) & (truth > 0)
    pairs = np.stack([labels[both].astype(np.int64), truth[both].astype(np.int64)])
    uniq, counts = np.unique(pairs, axis=1, return_counts=True)
    want = np.zeros(n, np.int64)
    for lab in range(1, n + 1):
        sel = uniq[0] == lab
        if sel.any():  # largest overlap, then the lowest id
            cand = sorted(zip(-counts[sel], uniq[1][sel]))
            want[lab - 1] = cand[0][1]
    assert np.array_equal(got, want)


def _organs_and_sul(seed: int):
    rng = np.random.default_rng(seed)
    bone = np.zeros(SHAPE, np.uint8)
    bone[:, :20] = 1
    liver = np.zeros(SHAPE, np.uint8)
    liver[5:35, 22:46, 8:40] = 1
    sul = rng.gamma(2.0, 0.7, SHAPE).astype(np.float32)
    return bone, liver, sul


def test_organ_of_lesions_equals_whole_volume_rule():
    labels, n = _labels(7)
    bone, liver, _ = _organs_and_sul(7)
    assert organ_of_lesions(labels, n, bone=bone, liver=liver) == lesion_organs(labels, n, bone=bone, liver=liver)
    assert organ_of_lesions(labels, n) == lesion_organs(labels, n)


def test_assess_scan_volumes_and_tlg_equal_whole_volume_sums():
    _, liver, sul = _organs_and_sul(8)
    labels, n = _labels(8, density=0.01)
    labels[liver != 0] = 0  # room for the reference sphere
    labels, n = label(labels, connectivity=26)
    scan = assess_scan(sul, labels, n, spacing=SPACING, liver=liver, sphere_mm=10.0)
    assert scan.reference.source == "liver"
    sums = np.bincount(labels.ravel(), weights=sul.ravel().astype(np.float64), minlength=n + 1)
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    voxel_ml = float(np.prod(SPACING)) / 1000.0
    assert len(scan.lesions) == n
    for les in scan.lesions:
        volume = counts[les.label] * voxel_ml
        assert les.volume_ml == float(volume)
        assert les.tlg == float(volume * sums[les.label] / counts[les.label])


def test_liver_site_gives_the_same_reference_as_the_mask():
    labels, n = _labels(9, density=0.002)
    _, liver, sul = _organs_and_sul(9)
    site = liver_site(liver, spacing=SPACING, diameter_mm=20.0)
    for lesions in (None, labels):
        want = liver_reference(sul, liver, spacing=SPACING, lesions=lesions, diameter_mm=20.0)
        assert want.source == "liver"
        assert liver_reference(sul, site, spacing=SPACING, lesions=lesions, diameter_mm=20.0) == want
    assert liver_site(np.zeros(SHAPE, np.uint8), spacing=SPACING) is None


def test_liver_site_of_another_sphere_is_refused():
    _, liver, sul = _organs_and_sul(10)
    site = liver_site(liver, spacing=SPACING, diameter_mm=20.0)
    with pytest.raises(InputError) as err:
        liver_reference(sul, site, spacing=SPACING, diameter_mm=30.0)
    assert err.value.reason == "BAD_VALUE"
