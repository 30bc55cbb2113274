"""Per-lesion and per-study quantification on hand-computed volumes."""
from __future__ import annotations

import numpy as np
import pytest

from petcohort.engine.errors import GridError, InputError
from petcohort.engine.kernels.lesions import LESION_KEYS, STUDY_KEYS, quantify
from petcohort.engine.kernels.sulpeak import peak


def _two_lesions():
    img = np.ones((10, 10, 10), np.float32)
    mask = np.zeros(img.shape, np.uint8)
    mask[1:3, 1:3, 1:3] = 1          # lesion A: 8 voxels, value 4
    img[1:3, 1:3, 1:3] = 4.0
    mask[6:9, 6:8, 6:8] = 1          # lesion B: 12 voxels, value 2, hot voxel 9
    img[6:9, 6:8, 6:8] = 2.0
    img[7, 7, 7] = 9.0
    return img, mask


def test_hand_values():
    img, mask = _two_lesions()
    bone = np.zeros(img.shape, np.uint8)
    bone[0:4] = 1                    # 400 bone voxels, lesion A inside
    liver = np.zeros(img.shape, np.uint8)
    liver[6:10] = 1                  # 400 liver voxels, lesion B inside
    q = quantify(img, mask, spacing=(2, 2, 2), bone=bone, liver=liver, sul_per_suvbw=0.5,
                 origin=(100.0, 0.0, -10.0))
    s = q.study
    assert set(STUDY_KEYS) <= set(s)
    assert s["lesion_count"] == 2
    assert s["mtv_ml"] == pytest.approx(20 * 0.008)
    a, b = q.lesions
    assert set(LESION_KEYS) <= set(a)
    assert a["voxels"] == 8 and a["suvmax"] == 4 and a["suvmean"] == pytest.approx(4)
    assert a["tlg"] == pytest.approx(8 * 0.008 * 4)
    assert b["suvmax"] == 9 and b["suvmean"] == pytest.approx((11 * 2 + 9) / 12)
    assert s["tlg"] == pytest.approx(a["tlg"] + b["tlg"])
    assert s["suvmax"] == 9
    assert s["suvmean"] == pytest.approx((8 * 4 + 11 * 2 + 9) / 20)
    assert a["centroid_mm"] == pytest.approx([100 + 1.5 * 2, 1.5 * 2, -10 + 1.5 * 2])
    assert b["centroid_mm"] == pytest.approx([100 + 7 * 2, 6.5 * 2, -10 + 6.5 * 2])
    assert s["dmax_mm"] == pytest.approx(np.linalg.norm(np.subtract(a["centroid_mm"], b["centroid_mm"])))
    assert a["organ"] == "bone" and b["organ"] == "liver"
    assert s["pbi"] == pytest.approx(8 / 400) and s["pli"] == pytest.approx(12 / 400)
    # peaks agree with the standalone kernel on each lesion
    pa = peak(img, q.labels == a["lesion"], spacing=(2, 2, 2))
    assert a["suvpeak"] == pytest.approx(pa.global_peak) and a["sulpeak"] == pytest.approx(0.5 * pa.global_peak)
    # sulpeak is the peak of the SUL image (linearity of the neighbourhood mean)
    sul_peak = peak(img * np.float32(0.5), q.labels == b["lesion"], spacing=(2, 2, 2)).global_peak
    assert b["sulpeak"] == pytest.approx(sul_peak, rel=1e-6)
    assert s["sulpeak"] == pytest.approx(max(a["sulpeak"], b["sulpeak"]))
    assert s["local_peak"] == pytest.approx(b["local_peak"])   # the study's hottest voxel is in B
    assert s["kernel_voxels"] == pa.kernel_voxels and s["kernel_ml"] == pytest.approx(pa.kernel_ml)


def test_missing_organs_and_sul_give_reasons_not_zero():
    img, mask = _two_lesions()
    s = quantify(img, mask, spacing=(2, 2, 2)).study
    assert s["pbi"] is None and s["pbi_reason"] == "NO_BONE_MASK"
    assert s["pli"] is None and s["pli_reason"] == "NO_LIVER_MASK"
    assert s["sulpeak"] is None and s["sulpeak_reason"] == "SUL_UNAVAILABLE"
    assert s["suvpeak"] is not None


def test_single_and_no_lesion():
    img, mask = _two_lesions()
    mask[6:] = 0
    s = quantify(img, mask, spacing=(2, 2, 2)).study
    assert s["lesion_count"] == 1 and s["dmax_mm"] == 0.0
    s = quantify(img, np.zeros_like(mask), spacing=(2, 2, 2), sul_per_suvbw=0.7).study
    assert s["lesion_count"] == 0 and s["mtv_ml"] == 0 and s["tlg"] == 0
    assert s["dmax_mm"] is None and s["suvmax"] is None and s["suvmax_reason"] == "EMPTY_MASK"
    assert s["sulpeak"] is None and s["sulpeak_reason"] == "EMPTY_MASK"


def test_connectivity_changes_lesion_count():
    img = np.ones((4, 4, 4), np.float32)
    mask = np.zeros(img.shape, np.uint8)
    mask[0, 0, 0] = mask[1, 1, 1] = 1
    assert quantify(img, mask, spacing=(1, 1, 1), connectivity=26).study["lesion_count"] == 1
    assert quantify(img, mask, spacing=(1, 1, 1), connectivity=6).study["lesion_count"] == 2


def test_dmax_many_lesions_uses_hull_exactly():
    rng = np.random.default_rng(3)
    img = np.ones((30, 30, 30), np.float32)
    mask = np.zeros(img.shape, np.uint8)
    pts = rng.choice(30 * 30 * 30, 150, replace=False)
    mask.ravel()[pts] = 1
    q = quantify(img, mask, spacing=(1, 2, 3), connectivity=6)
    c = np.array([les["centroid_mm"] for les in q.lesions])
    brute = max(np.linalg.norm(c[i] - c[j]) for i in range(len(c)) for j in range(len(c)))
    assert q.study["dmax_mm"] == pytest.approx(brute)


def test_errors():
    img, mask = _two_lesions()
    with pytest.raises(GridError):
        quantify(img, mask[:-1], spacing=(2, 2, 2))
    with pytest.raises(GridError):
        quantify(img, mask, spacing=(2, 2, 2), bone=mask[:, :-1])
    bad = img.copy()
    bad[5, 5, 5] = np.nan
    with pytest.raises(InputError) as e:
        quantify(bad, mask, spacing=(2, 2, 2))
    assert e.value.reason == "IMAGE_NOT_FINITE"
    with pytest.raises(InputError):
        quantify(img, mask, spacing=(2, 2, 2), sul_per_suvbw=0)


def test_organ_voxel_counts_equal_whole_volume_bincounts():
    """Counts from the lesion voxels only equal bincounts over the whole volume (background entry included)."""
    from petcohort.engine.kernels.lesions import organ_voxel_counts

    def whole(labels, n, bone, liver):
        flat, size = labels.ravel(), n + 1
        total = np.bincount(flat, minlength=size)[:size]
        out, either = [], None
        for mask in (bone, liver):
            if mask is None:
                out.append(np.zeros(size, np.int64))
                continue
            m = mask.ravel() != 0
            out.append(np.bincount(flat[m], minlength=size)[:size])
            either = m if either is None else either | m
        return (*out, total if either is None else total - np.bincount(flat[either], minlength=size)[:size])

    rng = np.random.default_rng(0)
    for t in range(40):
        labels = rng.integers(0, 6, (9, 10, 11)) * (rng.random((9, 10, 11)) < 0.3)
        n = int(rng.integers(5, 8))
        bone = rng.random(labels.shape) < 0.3 if t % 3 else None
        liver = (rng.random(labels.shape) < 0.4).astype(np.uint8) if t % 4 else None
        for got, want in zip(organ_voxel_counts(labels, n, bone=bone, liver=liver), whole(labels, n, bone, liver)):
            assert got.dtype == want.dtype and np.array_equal(got, want), t
