"""Tests of the PERCIST reference region (liver sphere, blood-pool fallback)."""
from __future__ import annotations

import numpy as np
import pytest

from petcohort.engine.errors import InputError
from petcohort.engine.kernels.reference import Reference, blood_pool_reference, liver_reference


def _brute_sphere(sul, centre, radius, spacing):
    z, y, x = np.indices(sul.shape)
    d2 = sum(((a - c) * s) ** 2 for a, c, s in zip((z, y, x), centre, spacing))
    vals = sul[d2 <= radius ** 2].astype(np.float64)
    return vals.mean(), vals.std(ddof=1), vals.size


def _noisy(shape, seed=0):
    return np.random.default_rng(seed).normal(1.5, 0.2, size=shape).astype(np.float32)


def test_liver_box_centre_is_hand_computed():
    # Liver [2:22, 2:22, 2:38] at 2 mm: admissible z/y 9..14, x 9..30; right part x <= 19.5,
    # whose centroid is (11.5, 11.5, 10.5); candidates tie between 10/11 in x and 11/12 in z/y:
    # depth picks x = 11 (20 mm vs 18 mm), then the lowest C-order index: (11, 11, 11).
    spacing = (2.0, 2.0, 2.0)
    liver = np.zeros((24, 24, 40), np.uint8)
    liver[2:22, 2:22, 2:38] = 1
    sul = _noisy(liver.shape)
    ref = liver_reference(sul, liver, spacing=spacing)
    assert ref.source == "liver" and ref.fallback_reason is None
    assert ref.centre_zyx == (11, 11, 11)
    mean, sd, n = _brute_sphere(sul, ref.centre_zyx, 15.0, spacing)
    assert ref.n_voxels == n
    assert ref.mean == pytest.approx(mean, rel=1e-9)
    assert ref.sd == pytest.approx(sd, rel=1e-9)


def test_sphere_is_inside_liver_and_right_of_centroid_anisotropic():
    spacing = (3.0, 2.0, 2.5)
    z, y, x = np.indices((22, 30, 40))
    # an ellipsoid liver
    liver = (((z - 11) * 3.0 / 30) ** 2 + ((y - 15) * 2.0 / 28) ** 2 + ((x - 20) * 2.5 / 48) ** 2) <= 1
    sul = _noisy(liver.shape, 1)
    ref = liver_reference(sul, liver, spacing=spacing)
    cz, cy, cx = ref.centre_zyx
    d2 = ((z - cz) * 3.0) ** 2 + ((y - cy) * 2.0) ** 2 + ((x - cx) * 2.5) ** 2
    assert liver[d2 <= 15.0 ** 2].all()
    assert cx <= np.nonzero(liver)[2].mean()


def test_sphere_keeps_away_from_lesions():
    spacing = (4.0, 4.0, 4.0)
    liver = np.zeros((20, 20, 50), np.uint8)
    liver[1:19, 1:19, 1:49] = 1
    lesions = np.zeros_like(liver)
    free = liver_reference(_noisy(liver.shape), liver, spacing=spacing)
    c = free.centre_zyx
    lesions[c[0], c[1], c[2]] = 1  # a lesion exactly where the sphere would go
    ref = liver_reference(_noisy(liver.shape), liver, spacing=spacing, lesions=lesions, lesion_margin_mm=10.0)
    assert ref.source == "liver"
    dist = np.sqrt(sum(((a - b) * s) ** 2 for a, b, s in zip(ref.centre_zyx, c, spacing)))
    assert dist > 15.0 + 10.0
    assert ref.centre_zyx[2] <= np.nonzero(liver)[2].mean()


def test_anisotropic_thin_liver_has_no_room():
    # 6 slices of 5 mm = 30 mm thick: the deepest centre is exactly 15 mm from
    # non-liver, so no 30 mm sphere fits (with voxel counts at 2 mm it would).
    spacing = (5.0, 2.0, 2.0)
    liver = np.zeros((8, 40, 40), np.uint8)
    liver[1:7, 2:38, 2:38] = 1
    with pytest.raises(InputError) as err:
        liver_reference(_noisy(liver.shape), liver, spacing=spacing)
    assert err.value.reason == "NO_REFERENCE"


def test_image_border_counts_as_outside_liver():
    liver = np.ones((10, 40, 40), np.uint8)  # 20 mm thick at 2 mm: fills the image
    with pytest.raises(InputError) as err:
        liver_reference(_noisy(liver.shape), liver, spacing=(2.0, 2.0, 2.0))
    assert err.value.reason == "NO_REFERENCE"


def _aorta(shape, centre_yx, radius_mm, spacing):
    z, y, x = np.indices(shape)
    return (((y - centre_yx[0]) * spacing[1]) ** 2 + ((x - centre_yx[1]) * spacing[2]) ** 2) <= radius_mm ** 2


def test_blood_pool_fallback_when_liver_missing():
    spacing = (2.0, 2.0, 2.0)
    shape = (20, 16, 16)
    aorta = _aorta(shape, (8, 8), 9.0, spacing)
    sul = _noisy(shape, 2)
    ref = liver_reference(sul, None, spacing=spacing, aorta=aorta)
    assert ref.source == "blood_pool" and ref.fallback_reason == "NO_LIVER_MASK"
    cz, cy, cx = ref.centre_zyx
    assert (cy, cx) == (8, 8)
    z, y, x = np.indices(shape)
    roi = (((y - cy) * 2.0) ** 2 + ((x - cx) * 2.0) ** 2 <= 25.0) & (np.abs(z - cz) * 2.0 <= 10.0)
    vals = sul[roi].astype(np.float64)
    assert ref.n_voxels == roi.sum() == 21 * 11
    assert ref.mean == pytest.approx(vals.mean(), rel=1e-9)
    assert ref.sd == pytest.approx(vals.std(ddof=1), rel=1e-9)
    # deepest centre along z: the middle slices (ties -> lowest index)
    assert cz == 9


def test_blood_pool_fallback_when_liver_has_no_room():
    spacing = (2.0, 2.0, 2.0)
    shape = (20, 16, 16)
    liver = np.zeros(shape, np.uint8)
    liver[2:6, 2:6, 2:6] = 1
    ref = liver_reference(_noisy(shape), liver, spacing=spacing, aorta=_aorta(shape, (8, 8), 9.0, spacing))
    assert isinstance(ref, Reference)
    assert ref.source == "blood_pool" and ref.fallback_reason == "LIVER_NO_ROOM"


def test_no_reference_when_aorta_too_thin_or_absent():
    spacing = (2.0, 2.0, 2.0)
    shape = (20, 16, 16)
    with pytest.raises(InputError) as err:
        blood_pool_reference(_noisy(shape), _aorta(shape, (8, 8), 3.0, spacing), spacing=spacing)
    assert err.value.reason == "NO_REFERENCE"
    with pytest.raises(InputError) as err:
        liver_reference(_noisy(shape), np.zeros(shape, np.uint8), spacing=spacing)
    assert err.value.reason == "NO_REFERENCE" and "NO_LIVER_MASK" in err.value.message


def test_bad_inputs_are_named():
    sul = _noisy((10, 10, 10))
    with pytest.raises(InputError) as err:
        liver_reference(sul, np.ones((10, 10, 9)), spacing=(2, 2, 2))
    assert err.value.reason == "GRID_MISMATCH"
    with pytest.raises(InputError) as err:
        liver_reference(sul, None, spacing=(2, 2))
    assert err.value.reason == "BAD_GEOMETRY"
    with pytest.raises(InputError) as err:
        liver_reference(sul, None, spacing=(2, 2, 2), diameter_mm=0)
    assert err.value.reason == "BAD_VALUE"
    bad = sul.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError) as err:
        liver_reference(bad, None, spacing=(2, 2, 2))
    assert err.value.reason == "IMAGE_NOT_FINITE"


def test_blood_pool_prefers_the_posterior_descending_aorta():
    # a wide anterior tube (ascending aorta, 12 mm radius) and a narrower
    # posterior one (descending, 8 mm): the deepest point is anterior, but the
    # cylinder goes in the posterior (Y grows posterior) part.
    spacing = (2.0, 2.0, 2.0)
    shape = (20, 30, 20)
    aorta = _aorta(shape, (7, 9), 12.0, spacing) | _aorta(shape, (22, 9), 8.0, spacing)
    ref = blood_pool_reference(_noisy(shape, 3), aorta, spacing=spacing)
    assert ref.centre_zyx[1:] == (22, 9)
    assert ref.source == "blood_pool"


@pytest.mark.parametrize("spacing, reach", [((4.0, 4.0, 4.0), 25.0), ((5.0, 5.0, 5.0), 25.0),
                                            ((3.27, 2.734, 2.734), 22.5), ((2.0, 4.07, 4.07), 15.0)])
def test_lesion_clearance_is_the_distance_transforms_verdict(spacing, reach):
    """Issue 12: the k-d tree clearance of the liver sphere equals ``distance_transform_edt(...) > reach``.

    Includes exact ties: on a 5 mm grid a lesion 3, 4, 0 voxels away is exactly 25 mm away (not clear).
    """
    import scipy.ndimage as ndi

    from petcohort.engine.kernels.reference import _clear_of_lesions

    rng = np.random.default_rng(int(sum(spacing) * 100))
    shape = (40, 36, 44)
    crop = (slice(8, 30), slice(6, 28), slice(10, 36))
    for case in range(12):
        lesions = np.zeros(shape, np.uint8)
        lesions[rng.random(shape) < rng.choice([0.0005, 0.003, 0.02])] = 1
        if case == 0:
            lesions[:] = 0
            lesions[19, 20, 20] = 1                              # one voxel: ties at every integer radius
        cand = np.argwhere(rng.random(tuple(s.stop - s.start for s in crop)) < 0.5)
        got = _clear_of_lesions(lesions, crop, cand, reach, spacing)
        region = lesions != 0
        if not region[tuple(slice(max(0, c.start - int(np.ceil(reach / s)) - 1), c.stop + int(np.ceil(reach / s)) + 1)
                            for c, s in zip(crop, spacing))].any():
            assert got is None
            continue
        dist = ndi.distance_transform_edt(~region, sampling=spacing)[crop]
        want = dist[tuple(cand.T)] > reach
        np.testing.assert_array_equal(got, want, err_msg=f"case {case}")
