"""resample_to_grid (storage/resample.py, SimpleITK) against hand-computed values and scipy."""
import numpy as np
import pytest
from scipy import ndimage

from petcohort.engine.errors import GridError
from petcohort.storage.resample import resample_to_grid


def test_identity_grid_keeps_values_and_dtype():
    ct = np.random.default_rng(0).integers(-1000, 1500, (4, 5, 6)).astype(np.int16)
    out = resample_to_grid(ct, (2, 2, 2), (0, 0, 0), ct.shape, (2, 2, 2), (0, 0, 0))
    assert out.dtype == np.int16
    np.testing.assert_array_equal(out, ct)


def test_half_voxel_shift_is_linear_mean_and_outside_is_default():
    ct = np.zeros((3, 3, 4), np.int16)
    ct[..., 1] = 100
    ct[..., 2] = 301
    # the destination x origin is half a voxel (1 mm) to patient left: values between columns
    out = resample_to_grid(ct, (2, 2, 2), (0, 0, 0), (3, 3, 4), (2, 2, 2), (0, 0, 1.0))
    assert out[1, 1, 0] == 50            # (0 + 100) / 2
    assert out[1, 1, 1] == 200           # (100 + 301) / 2 = 200.5, rounded half to even
    assert out[1, 1, 3] == -1000         # beyond the last source column
    empty = resample_to_grid(ct, (2, 2, 2), (0, 0, 0), (2, 2, 2), (2, 2, 2), (100, 100, 100), default=-1024)
    assert np.all(empty == -1024)


def test_nearest_for_labels():
    mask = np.zeros((4, 4, 4), np.uint8)
    mask[1:3, 1:3, 1:3] = 1
    # source centres 0, 2, 4, 6 mm (label at 2 and 4 mm); destination centres 0.25, 1.25, ... 7.25 mm:
    # the nearest source centre of 1.25-4.25 mm is 2 or 4 mm, so destination indices 1-4 are labelled
    out = resample_to_grid(mask, (2, 2, 2), (0, 0, 0), (8, 8, 8), (1, 1, 1), (0.25, 0.25, 0.25),
                           interpolation="nearest", default=0)
    expected = np.zeros((8, 8, 8), np.uint8)
    expected[1:5, 1:5, 1:5] = 1
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


def test_agrees_with_scipy_on_anisotropic_grids():
    rng = np.random.default_rng(3)
    img = rng.normal(size=(6, 7, 8)).astype(np.float32)
    src_sp, src_or = (3.0, 2.0, 1.5), (-5.0, 2.0, 1.0)
    dst_sp, dst_or, shape = (2.0, 1.3, 1.1), (-4.0, 2.5, 2.0), (6, 8, 9)
    out = resample_to_grid(img, src_sp, src_or, shape, dst_sp, dst_or, default=0.0)
    idx = np.indices(shape).reshape(3, -1).astype(float)
    coords = (np.asarray(dst_or)[:, None] + idx * np.asarray(dst_sp)[:, None] - np.asarray(src_or)[:, None]) \
        / np.asarray(src_sp)[:, None]
    ref = ndimage.map_coordinates(img.astype(np.float64), coords, order=1, mode="constant", cval=0.0).reshape(shape)
    inside = np.all((coords >= 0) & (coords <= np.array(img.shape)[:, None] - 1), axis=0).reshape(shape)
    assert inside.sum() > 50
    np.testing.assert_allclose(out[inside], ref[inside], atol=1e-4)


@pytest.mark.parametrize("kwargs, reason", [
    ({"interpolation": "cubic"}, "BAD_VALUE"),
    ({"dst_spacing": (0, 1, 1)}, "BAD_GEOMETRY"),
    ({"dst_shape": (2, 2)}, "BAD_GEOMETRY"),
])
def test_bad_arguments(kwargs, reason):
    args = {"src_spacing": (1, 1, 1), "src_origin": (0, 0, 0), "dst_shape": (2, 2, 2), "dst_spacing": (1, 1, 1),
            "dst_origin": (0, 0, 0)}
    args.update(kwargs)
    with pytest.raises(GridError) as e:
        resample_to_grid(np.zeros((2, 2, 2)), **args)
    assert e.value.reason == reason
