"""Rigid PET-PET registration (engine/segment/registration.py) on small synthetic PETs."""
from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest

pytest.importorskip("ants", reason="antspyx is not installed: run scripts/install_seg.sh .venv")

from petcohort.engine.errors import InputError, SegmentationError
from petcohort.engine.segment.registration import apply_transform, default_pyramid, default_schedule, register_rigid
from petcohort.engine.segment.rigid import Geometry, RigidTransform, normalised_correlation, transform_difference

SHAPE = (28, 36, 36)
SPACING = (4.0, 3.0, 3.0)


def _phantom(shift_mm=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Smooth body + hot blobs, the anatomy moved by ``shift_mm`` (z, y, x) in physical space."""
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip(SHAPE, SPACING)], indexing="ij")
    pos = [z - shift_mm[0], y - shift_mm[1], x - shift_mm[2]]
    img = np.zeros(SHAPE, np.float64)
    body = ((pos[1] - 54) / 38) ** 2 + ((pos[2] - 54) / 44) ** 2
    img += 1.0 / (1.0 + np.exp((body - 1.0) * 12))
    for (cz, cy, cx), amp, r in [((40, 40, 40), 6.0, 6), ((70, 64, 70), 4.0, 8), ((30, 70, 30), 3.0, 5),
                                 ((80, 45, 62), 5.0, 4)]:
        img += amp * np.exp(-((pos[0] - cz) ** 2 + (pos[1] - cy) ** 2 + (pos[2] - cx) ** 2) / (2 * r * r))
    return img.astype(np.float32)


def _lesion_mask(shift_mm=(0.0, 0.0, 0.0)) -> np.ndarray:
    return (_phantom(shift_mm) > 3.0).astype(np.uint8)


def test_recovers_known_shift_within_a_voxel_and_is_deterministic():
    geom = Geometry(SPACING, (0.0, 0.0, 0.0))
    shift = (6.0, -4.5, 3.0)                      # mm, baseline anatomy moved by this
    fu = _phantom()
    bl = _phantom(shift)
    res = register_rigid(fu, geom, bl, geom, moving_mask=_lesion_mask(shift), seed=7)
    # follow-up point p maps to baseline p + shift: ITK translation (x, y, z) = shift reversed
    t_xyz = np.asarray(res.transform.parameters[9:12])
    assert np.allclose(t_xyz, shift[::-1], atol=min(SPACING)), t_xyz
    assert res.transform.rotation_deg < 2.0
    assert not res.flagged and res.reason is None
    assert res.corr_after > res.corr_before and res.corr_after > 0.95
    assert res.pet.shape == SHAPE and res.pet.dtype == np.float32
    assert res.mask.dtype == np.uint8 and set(np.unique(res.mask)) <= {0, 1}
    truth = _lesion_mask()
    dice = 2 * np.sum(truth & res.mask) / (truth.sum() + res.mask.sum())
    assert dice > 0.8          # half-voxel shift: discretisation differences at the rims
    again = register_rigid(fu, geom, bl, geom, moving_mask=_lesion_mask(shift), seed=7)
    assert again.transform.parameters == res.transform.parameters
    assert np.array_equal(again.pet, res.pet) and np.array_equal(again.mask, res.mask)
    # the saved transform reproduces the resampling
    tx = RigidTransform.from_dict(res.summary()["transform"])
    pet2 = apply_transform(tx, bl, moving_geom=geom, fixed_shape=SHAPE, fixed_geom=geom)
    assert np.allclose(pet2, res.pet, atol=1e-3)


def test_origin_offset_is_physical_not_voxel():
    """Same anatomy stored with different origins: the transform is the origin difference."""
    fu = _phantom()
    fixed = Geometry(SPACING, (0.0, 0.0, 0.0))
    moving = Geometry(SPACING, (-8.0, 6.0, -3.0))   # baseline array = same voxels, origin moved
    res = register_rigid(fu, fixed, fu, moving, seed=1)
    t_xyz = np.asarray(res.transform.parameters[9:12])
    assert np.allclose(t_xyz, np.array([-3.0, 6.0, -8.0]), atol=min(SPACING)), t_xyz


def test_implausible_translation_is_flagged():
    geom = Geometry(SPACING)
    res = register_rigid(_phantom(), geom, _phantom((8.0, 0.0, 0.0)), geom, seed=3, max_translation_mm=2.0)
    assert res.flagged and res.reason == "REGISTRATION_IMPLAUSIBLE"
    assert any("translation" in p for p in res.problems)


def test_bad_inputs():
    geom = Geometry(SPACING)
    with pytest.raises(SegmentationError) as exc:
        register_rigid(_phantom(), geom, np.ones(SHAPE, np.float32), geom)
    assert exc.value.reason == "REGISTRATION_FAILED"
    with pytest.raises(InputError) as exc:
        register_rigid(_phantom(), geom, _phantom()[:, :, :2], geom)
    assert exc.value.reason == "NOT_3D"
    with pytest.raises(InputError) as exc:
        Geometry.from_attrs({"spacing": [1.0, -2.0, 1.0]})
    assert exc.value.reason == "BAD_GEOMETRY"
    with pytest.raises(SegmentationError):
        normalised_correlation(np.zeros(8), np.arange(8.0))


def test_default_pyramid_by_size():
    assert default_pyramid((336, 80, 160))[1] == (8, 4, 2)       # whole body: stop at half resolution
    assert default_pyramid(SHAPE)[1] == (4, 2, 1)


# -- the "fast" schedule (block-averaged whole-body PETs) against the full-resolution one ------------------------
WB_SHAPE = (80, 64, 72)            # shortest axis 64: a whole-body-sized grid for the schedules
WB_SPACING = (4.0, 4.0, 4.0)


def _rotation(axis_angle_deg) -> np.ndarray:
    """Rotation matrix (x, y, z) of the rotation vector ``axis_angle_deg`` (degrees)."""
    v = np.radians(np.asarray(axis_angle_deg, float))
    theta = float(np.linalg.norm(v))
    k = v / theta
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * kx + (1 - np.cos(theta)) * kx @ kx


def _body(x, y, z) -> np.ndarray:
    """Trunk-like phantom at physical points (mm): elliptic cylinder along z, a lung gap, hot blobs."""
    img = 1.0 / (1.0 + np.exp((((x - 144) / 100) ** 2 + ((y - 128) / 70) ** 2 - 1.0) * 10))
    img *= 1.0 / (1.0 + np.exp((np.abs(z - 160) - 130) / 6))                 # finite length along z
    img -= 0.6 * np.exp(-(((x - 110) / 25) ** 2 + ((y - 120) / 30) ** 2 + ((z - 220) / 40) ** 2))
    for (cx, cy, cz), amp, r in [((100, 110, 80), 6.0, 8), ((190, 150, 150), 4.0, 12), ((150, 90, 230), 5.0, 9),
                                 ((120, 160, 260), 3.0, 7), ((170, 120, 60), 8.0, 6)]:
        img += amp * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * r * r))
    return img


def _known_motion_pair(rot_deg, t_xyz):
    """Follow-up and baseline PETs of the same anatomy; the baseline moved by a known rigid transform.

    Truth: the follow-up point p is the baseline point ``R (p - c) + c + t`` (ITK's convention, c the grid centre).
    """
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip(WB_SHAPE, WB_SPACING)], indexing="ij")
    c = np.array([(n - 1) * s / 2 for n, s in zip(WB_SHAPE[::-1], WB_SPACING[::-1])])   # x, y, z
    rot = _rotation(rot_deg)
    q = np.stack([x, y, z], axis=-1).reshape(-1, 3)
    p = (q - c - np.asarray(t_xyz)) @ rot + c                                  # R^T (q - c - t) + c
    fu = _body(x, y, z).astype(np.float32)
    bl = _body(*p.T).reshape(WB_SHAPE).astype(np.float32)
    return fu, bl, RigidTransform(tuple(rot.ravel()) + tuple(t_xyz), tuple(c))


@pytest.mark.parametrize("rot_deg, t_xyz", [((0.0, 0.0, 2.0), (4.0, -3.0, 6.0)),
                                            ((1.5, -1.0, 0.0), (-5.0, 2.5, -4.0))])
def test_fast_schedule_within_tolerance_of_full(rot_deg, t_xyz):
    """Issue 12: the block-averaged schedule stays within 1 mm / 0.5 degree of the full-resolution one."""
    geom = Geometry(WB_SPACING, (0.0, 0.0, 0.0))
    fu, bl, truth = _known_motion_pair(rot_deg, t_xyz)
    assert default_schedule(WB_SHAPE).block > 1 and default_schedule(WB_SHAPE, "full").block == 1
    fast = register_rigid(fu, geom, bl, geom, seed=42)
    full = register_rigid(fu, geom, bl, geom, seed=42, schedule="full")
    mm, deg = transform_difference(fast.transform, full.transform)
    assert mm <= 1.0 and deg <= 0.5, (mm, deg)
    for res in (fast, full):                                   # both found the known motion
        mm, deg = transform_difference(truth, res.transform)
        assert mm <= 2.0 and deg <= 1.0, (mm, deg)
        assert not res.flagged and res.corr_after > res.corr_before
    assert fast.pet.shape == WB_SHAPE and fast.pet.dtype == np.float32


def test_transform_difference_and_schedules():
    a = RigidTransform(tuple(np.eye(3).ravel()) + (1.0, 2.0, 2.0), (10.0, 0.0, 0.0))
    b = RigidTransform(tuple(_rotation((0.0, 0.0, 0.3)).ravel()) + (1.0, 2.0, 2.0), (10.0, 0.0, 0.0))
    assert transform_difference(a, a) == (0.0, 0.0)
    mm, deg = transform_difference(a, b)
    assert mm == pytest.approx(0.0, abs=1e-12) and deg == pytest.approx(0.3, abs=1e-9)
    assert default_schedule(SHAPE).block == 1                  # small images: full resolution
    with pytest.raises(InputError) as exc:
        default_schedule(SHAPE, "quick")
    assert exc.value.reason == "BAD_VALUE"


def test_correlation_chunked_equals_direct():
    rng = np.random.default_rng(0)
    a = rng.random(300_001).astype(np.float32)
    b = (a + rng.random(a.size).astype(np.float32)).astype(np.float32)
    direct = np.corrcoef(a.astype(np.float64), b.astype(np.float64))[0, 1]
    assert normalised_correlation(a, b) == pytest.approx(direct, rel=1e-12)


def test_correlation_before_on_the_same_grid_is_the_identity_resampling():
    """Same grid: the 'before' correlation takes the baseline as it is, which is what ITK's identity resampling gives."""
    from petcohort.engine.segment import registration as reg

    geom = Geometry(SPACING, (0.0, 0.0, 0.0))
    fu, bl = _phantom(), _phantom((6.0, -4.5, 3.0))
    res = register_rigid(fu, geom, bl, geom, seed=7)
    assert res.corr_before == normalised_correlation(fu, bl)
    ants = reg._ants()
    with tempfile.TemporaryDirectory() as tmp:
        identity = reg._write_transform(ants, None, os.path.join(tmp, "identity.mat"))
        itk = reg._apply(ants, identity, bl, geom, reg._to_ants(ants, fu, geom), "linear")
    np.testing.assert_allclose(itk, bl, rtol=1e-6, atol=1e-6)
    assert normalised_correlation(fu, itk) == pytest.approx(res.corr_before, abs=1e-9)


def test_label_warp_of_the_mask_box_equals_the_whole_grid_warp():
    """The mask is warped only over the follow-up box that can take a label: the same labels as ANTs on the whole
    grid, for rotated, translated and integer-shifted transforms, masks touching the grid's edges, and empty masks."""
    from petcohort.engine.segment import registration as reg

    ants = reg._ants()
    rng = np.random.default_rng(1)
    labelled = 0
    for trial in range(16):
        m_shape, f_shape = tuple(rng.integers(20, 48, 3)), tuple(rng.integers(20, 48, 3))
        m_geom = Geometry(tuple(rng.uniform(1, 5, 3)), tuple(rng.uniform(-50, 50, 3)))
        f_geom = Geometry(tuple(rng.uniform(1, 5, 3)), tuple(rng.uniform(-50, 50, 3)))
        mask = np.zeros(m_shape, np.uint8)
        for _ in range(int(rng.integers(0 if trial else 1, 4))):   # trial 0: an empty mask
            centre, r = [int(rng.integers(0, s)) for s in m_shape], int(rng.integers(1, 6))
            mask[tuple(slice(max(0, c - r), c + r) for c in centre)] = 1
        if trial % 5 == 1:
            mask[0, 0, :] = mask[-1, -1, -1] = 1
        rot = _rotation(rng.normal(0, 10, 3)) if trial % 3 else np.eye(3)
        shift = rng.normal(0, 20, 3) if trial % 4 else np.round(rng.normal(0, 5, 3))
        transform = RigidTransform(tuple(rot.ravel()) + tuple(shift), tuple(rng.uniform(-20, 20, 3)))
        with tempfile.TemporaryDirectory() as tmp:
            tx = reg._write_transform(ants, transform, os.path.join(tmp, "rigid.mat"))
            whole = reg._apply(ants, tx, mask, m_geom, reg._fixed_image(ants, f_shape, f_geom), "genericLabel") > 0.5
        boxed = apply_transform(transform, mask, moving_geom=m_geom, fixed_shape=f_shape, fixed_geom=f_geom,
                                label=True)
        assert boxed.dtype == np.uint8 and boxed.shape == f_shape
        np.testing.assert_array_equal(boxed, whole.astype(np.uint8))
        labelled += int(whole.sum())
    assert labelled > 1000                                     # the cases do put labels on the follow-up grid


def test_label_ids_resampled_over_their_boxes_equal_the_whole_grid():
    """``keep_labels`` resamples only the labels' box onto the follow-up box that can take one: the same ids
    as nearest neighbour over the whole grid, with rotations, translations, integer shifts, a 2:1 spacing
    ratio (exact half-voxel ties), labels at the grid's edges, and no labels."""
    from petcohort.engine.kernels.resample import resample_affine
    from petcohort.engine.segment.rigid import index_affine

    rng = np.random.default_rng(3)
    labelled = 0
    for trial in range(24):
        m_shape, f_shape = tuple(rng.integers(20, 48, 3)), tuple(rng.integers(20, 48, 3))
        if trial % 6 == 2:   # follow-up voxels half the baseline's: centres fall on baseline half-voxels
            m_geom, f_geom = Geometry((4.0, 4.0, 4.0), (0.0, 0.0, 0.0)), Geometry((2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
        else:
            m_geom = Geometry(tuple(rng.uniform(1, 5, 3)), tuple(rng.uniform(-50, 50, 3)))
            f_geom = Geometry(tuple(rng.uniform(1, 5, 3)), tuple(rng.uniform(-50, 50, 3)))
        labels = np.zeros(m_shape, np.int32)
        for i in range(int(rng.integers(0 if trial else 1, 5))):   # trial 0: no labels
            centre, r = [int(rng.integers(0, s)) for s in m_shape], int(rng.integers(1, 6))
            labels[tuple(slice(max(0, c - r), c + r) for c in centre)] = i + 1
        if trial % 5 == 1:
            labels[0, 0, :] = 7
            labels[-1, -1, -1] = 8
        rot = _rotation(rng.normal(0, 10, 3)) if trial % 3 else np.eye(3)
        shift = rng.normal(0, 20, 3) if trial % 4 else np.round(rng.normal(0, 5, 3))
        transform = RigidTransform(tuple(rot.ravel()) + tuple(shift),
                                   tuple(rng.uniform(-20, 20, 3)) if trial % 3 else (0.0, 0.0, 0.0))
        matrix, offset = index_affine(transform, m_geom, f_geom)
        whole = resample_affine(labels, matrix, offset, f_shape, order=0, dtype=np.int32)
        boxed = apply_transform(transform, labels, moving_geom=m_geom, fixed_shape=f_shape, fixed_geom=f_geom,
                                label=True, keep_labels=True)
        assert boxed.dtype == np.int32 and boxed.shape == f_shape
        np.testing.assert_array_equal(boxed, whole)
        labelled += int(np.count_nonzero(whole))
    assert labelled > 1000                                     # the cases do put labels on the follow-up grid


def test_body_mask_keeps_the_body_and_its_outline_only_where_it_applies():
    from petcohort.engine.segment.reg_schedule import BODY_FRACTION_RANGE, body_mask

    img = np.zeros((40, 40, 40), np.float32)
    img[5:35, 6:34, 8:32] = 1.0
    img[20, 20, 20] = 100.0                                    # a hot spot sets the 99th percentile, not the level
    level = 0.05
    body = body_mask(img, level)
    threshold = level * float(np.percentile(img, 99))
    inside = img > threshold
    assert body is not None and body[inside].all()             # the body ...
    grown = np.zeros_like(inside)
    grown[4:36, 6:34, 8:32] = grown[5:35, 5:35, 8:32] = grown[5:35, 6:34, 7:33] = True
    np.testing.assert_array_equal(body, grown)                 # ... and one voxel of air around it (6-connected)
    assert body_mask(img * 1000.0, level) is not None and (body_mask(img * 1000.0, level) == body).all()  # scale-free
    assert body_mask(np.ones((20, 20, 20), np.float32), level) is None            # no air: nothing to save
    speck = np.zeros((40, 40, 40), np.float32)
    speck[18:22, 18:22, 18:22] = 1.0
    assert body_mask(speck, level) is None                     # too little to sample
    assert BODY_FRACTION_RANGE[0] < float(body.mean()) < BODY_FRACTION_RANGE[1]


def test_fast_schedule_samples_the_body_and_records_its_fraction():
    geom = Geometry(WB_SPACING, (0.0, 0.0, 0.0))
    fu, bl, truth = _known_motion_pair((0.5, 0.0, -1.0), (3.0, -2.0, 5.0))
    res = register_rigid(fu, geom, bl, geom, seed=42)
    assert default_schedule(WB_SHAPE).body_level is not None and default_schedule(WB_SHAPE, "full").body_level is None
    fraction = res.summary()["qc"]["body_fraction"]
    assert fraction is not None and 0.2 < fraction < 0.9
    mm, deg = transform_difference(truth, res.transform)
    assert mm <= 1.0 and deg <= 0.5, (mm, deg)
    assert register_rigid(fu, geom, bl, geom, seed=42, schedule="full").summary()["qc"]["body_fraction"] is None


def test_label_warp_with_a_degenerate_matrix_falls_back_to_the_whole_grid():
    from petcohort.engine.kernels.label import bounding_box
    from petcohort.engine.segment import registration as reg

    flat = RigidTransform((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0))
    geom = Geometry((2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    mask = np.zeros((8, 9, 10), np.uint8)
    mask[0, 2:5, 3:6] = 1
    assert reg._label_region(flat, bounding_box(mask), geom, (6, 7, 8), geom) == (slice(0, 6), slice(0, 7),
                                                                                slice(0, 8))
    from petcohort.engine.kernels.resample import resample_affine
    from petcohort.engine.segment.rigid import index_affine

    matrix, offset = index_affine(flat, geom, geom)   # label ids: the same as nearest neighbour on the whole grid
    np.testing.assert_array_equal(
        apply_transform(flat, mask * 3, moving_geom=geom, fixed_shape=(6, 7, 8), fixed_geom=geom, label=True,
                        keep_labels=True),
        resample_affine(mask.astype(np.int32) * 3, matrix, offset, (6, 7, 8), order=0, dtype=np.int32))
