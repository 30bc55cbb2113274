"""Rigid PET-PET registration (engine/segment/registration.py) on small synthetic PETs."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ants", reason="antspyx is not installed: run scripts/install_seg.sh .venv")

from petcohort.engine.errors import InputError, SegmentationError
from petcohort.engine.segment.registration import (
    Geometry,
    RigidTransform,
    apply_transform,
    default_pyramid,
    normalised_correlation,
    register_rigid,
)

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
    assert exc.value.reason == "BAD_SHAPE"
    with pytest.raises(InputError) as exc:
        Geometry.from_attrs({"spacing": [1.0, -2.0, 1.0]})
    assert exc.value.reason == "BAD_GEOMETRY"
    with pytest.raises(SegmentationError):
        normalised_correlation(np.zeros(8), np.arange(8.0))


def test_default_pyramid_by_size():
    assert default_pyramid((336, 80, 160))[1] == (8, 4, 2)       # whole body: stop at half resolution
    assert default_pyramid(SHAPE)[1] == (4, 2, 1)
