"""Dice, global Dice, detection (>= overlap rule) and autoPET FP/FN volumes."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from petcohort.engine.errors import GridError, InputError
from petcohort.engine.kernels.label import label
from petcohort.engine.kernels.metrics import DiceParts, detection, dice, dice_parts, evaluate, global_dice


def _case():
    t = np.zeros((10, 10, 10), np.uint8)
    p = np.zeros_like(t)
    t[0:2, 0:2, 0:2] = 1          # GT A, 8 voxels; pred covers 4 -> 50% -> TP (>=)
    p[0:1, 0:2, 0:2] = 1
    t[5, 5, 5:9] = 1              # GT B, 4 voxels; pred covers 1 -> 25% -> FN (overlapping)
    p[5, 5, 5] = 1
    p[5, 5, 4] = 0
    t[8, 0, 0] = 1                # GT C, 1 voxel, no overlap -> FN (counts in FN volume)
    p[0, 8:10, 8:10] = 1          # pred D, 4 voxels, no overlap -> FP (FP volume)
    return t, p


def test_hand_detection_and_volumes():
    t, p = _case()
    det = detection(t, p, connectivity=26, overlap=0.5)
    # pred lesions: {A-part (4 vox, 100% in GT), B-part (1 vox, 100%), D (0%)}
    assert (det.tp, det.fn, det.tp_pred, det.fp) == (1, 2, 2, 1)
    assert det.recall == pytest.approx(1 / 3) and det.precision == pytest.approx(2 / 3)
    assert det.fn_component_voxels == 1 and det.fp_component_voxels == 4
    ev = evaluate(t, p, spacing=(2, 2, 2))
    assert ev["fp_volume_ml"] == pytest.approx(4 * 0.008) and ev["fn_volume_ml"] == pytest.approx(0.008)
    assert ev["dice"] == pytest.approx(2 * 5 / (13 + 9))
    assert (ev["intersect"], ev["truth_voxels"], ev["pred_voxels"]) == (5, 13, 9)
    # a stricter rule turns A into an FN
    assert detection(t, p, overlap=0.51).tp == 0


def test_overlap_fraction_is_not_spoiled_by_rounding():
    t = np.zeros((1, 1, 10), np.uint8)
    t[0, 0, :] = 1
    p = np.zeros_like(t)
    p[0, 0, :3] = 1               # exactly 30%
    assert detection(t, p, overlap=0.3).tp == 1


def test_empty_cases():
    z = np.zeros((3, 3, 3), np.uint8)
    assert dice(z, z) is None
    ev = evaluate(z, z, spacing=(1, 1, 1))
    assert ev["dice"] is None and ev["dice_reason"] == "BOTH_EMPTY"
    assert ev["recall"] is None and ev["recall_reason"] == "NO_TRUTH_LESIONS"
    assert ev["precision"] is None and ev["precision_reason"] == "NO_PRED_LESIONS"
    o = z.copy()
    o[1, 1, 1] = 1
    assert dice(o, z) == 0.0 and dice(o, o) == 1.0


def test_global_dice_pools_voxels():
    parts = [DiceParts(5, 10, 10), DiceParts(0, 0, 0), DiceParts(0, 2, 0)]
    assert global_dice(parts) == pytest.approx(10 / 22)
    assert global_dice([{"intersect": 5, "truth_voxels": 10, "pred_voxels": 10}]) == pytest.approx(0.5)
    assert global_dice([]) is None


def test_errors():
    z = np.zeros((3, 3, 3), np.uint8)
    with pytest.raises(GridError):
        dice(z, z[:2])
    with pytest.raises(InputError):
        detection(z, z, overlap=0)
    with pytest.raises(InputError):
        detection(z, z, connectivity=4)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.sampled_from([6, 18, 26]), st.floats(0.1, 1.0))
def test_detection_matches_per_lesion_loop(seed, connectivity, overlap):
    rng = np.random.default_rng(seed)
    t = (rng.random((6, 7, 8)) < 0.2).astype(np.uint8)
    p = (rng.random((6, 7, 8)) < 0.2).astype(np.uint8)
    det = detection(t, p, connectivity=connectivity, overlap=overlap)
    tl, nt = label(t, connectivity=connectivity)
    pl, npred = label(p, connectivity=connectivity)
    tp = sum((p[tl == i] != 0).sum() / (tl == i).sum() >= overlap for i in range(1, nt + 1))
    tpp = sum((t[pl == i] != 0).sum() / (pl == i).sum() >= overlap for i in range(1, npred + 1))
    assert (det.tp, det.fn, det.tp_pred, det.fp) == (tp, nt - tp, tpp, npred - tpp)
    fpv = sum((pl == i).sum() for i in range(1, npred + 1) if not t[pl == i].any())
    assert det.fp_component_voxels == fpv
    parts = dice_parts(t, p)
    assert parts.intersect == int((t & p).sum())
