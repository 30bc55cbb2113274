"""Resampling kernel (engine/kernels/resample.py) against ITK's ResampleImageFilter through ANTs."""
from __future__ import annotations

import itertools
import os
import shutil
import tempfile

import numpy as np
import pytest

from petcohort.engine.kernels.resample import inside_mask, resample_affine
from petcohort.engine.segment.registration import _ants, _from_ants, _to_ants
from petcohort.engine.segment.rigid import Geometry, RigidTransform, index_affine


def _rotation(deg_xyz):
    ax, ay, az = np.radians(deg_xyz)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _case(seed):
    rng = np.random.default_rng(seed)
    mg = Geometry((3.0, 2.5, 2.0), (-40.0, -31.0, -22.0))
    fg = Geometry((2.7, 2.0, 2.2), (-37.0, -29.5, -25.0))
    tx = RigidTransform(tuple(_rotation(rng.uniform(-8, 8, 3)).ravel()) + tuple(rng.uniform(-6, 6, 3)),
                        tuple(rng.uniform(-5, 5, 3)))
    return rng, mg, fg, tx


def _itk(moving, mg, fg, fixed_shape, tx, interpolator):
    """antsApplyTransforms in double precision (ANTsPy's default): the reference."""
    ants = _ants()
    fixed = ants.from_numpy(np.zeros(fixed_shape[::-1], np.float32), origin=list(fg.origin[::-1]),
                            spacing=list(fg.spacing[::-1]), direction=np.eye(3))
    t = ants.create_ants_transform(transform_type="AffineTransform", precision="float", dimension=3,
                                   parameters=list(tx.parameters), fixed_parameters=list(tx.fixed_parameters))
    tmp = tempfile.mkdtemp()
    try:
        f = os.path.join(tmp, "t.mat")
        ants.write_transform(t, f)
        return _from_ants(ants.apply_transforms(fixed=fixed, moving=_to_ants(ants, moving, mg), transformlist=[f],
                                                interpolator=interpolator, defaultvalue=0))
    finally:
        shutil.rmtree(tmp)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nearest_labels_equal_itk(seed):
    rng, mg, fg, tx = _case(seed)
    labels = rng.integers(0, 300, size=(20, 24, 28)).astype(np.int32)
    shape = (22, 23, 27)
    matrix, offset = index_affine(tx, mg, fg)
    ours = resample_affine(labels, matrix, offset, shape, order=0, dtype=np.int32)
    ref = np.rint(_itk(labels, mg, fg, shape, tx, "nearestNeighbor")).astype(np.int32)
    assert ours.dtype == np.int32 and np.array_equal(ours, ref)


@pytest.mark.parametrize("seed", [3, 4])
def test_linear_equals_itk_away_from_the_lower_edge_shell(seed):
    rng, mg, fg, tx = _case(seed)
    image = rng.random((20, 24, 28)).astype(np.float32) * 10
    shape = (22, 23, 27)
    matrix, offset = index_affine(tx, mg, fg)
    ours = resample_affine(image, matrix, offset, shape, order=1)
    ref = _itk(image, mg, fg, shape, tx, "linear")
    # ITK extrapolates within half a voxel below index 0; everywhere else the same rule
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    cont = (idx @ matrix.T + offset).reshape(*shape, 3)
    interior = (cont >= 0).all(-1)
    outside = ~inside_mask(matrix, offset, image.shape, shape)
    assert interior.sum() > 1000 and outside.sum() > 100
    np.testing.assert_allclose(ours[interior], ref[interior], rtol=1e-5, atol=1e-5)
    assert (ours[outside] == 0).all() and (ref[outside] == 0).all()     # the same inside-the-buffer rule


def test_inside_mask_is_the_closed_open_half_voxel_rule():
    """Brute force: inside iff -0.5 <= c < n - 0.5 on every axis, for slopes of every sign and zero."""
    for signs in itertools.product((-1.0, 0.0, 1.0), repeat=3):
        matrix = np.diag([1.0, 1.0, 1.0]) * 0.9
        matrix[:, 2] = np.array(signs) * 0.7
        offset = np.array([1.3, -2.25, 3.5])
        shape, in_shape = (9, 10, 11), (8, 9, 7)
        idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
        c = idx @ matrix.T + offset
        brute = ((c >= -0.5) & (c < np.array(in_shape) - 0.5)).all(-1)
        assert np.array_equal(inside_mask(matrix, offset, in_shape, shape), brute), signs


def test_identity_returns_the_input_and_bad_order_is_refused():
    a = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    np.testing.assert_array_equal(resample_affine(a, np.eye(3), np.zeros(3), a.shape, order=1), a)
    np.testing.assert_array_equal(resample_affine(a.astype(np.int32), np.eye(3), np.zeros(3), a.shape, order=0,
                                                  dtype=np.int32), a)
    with pytest.raises(ValueError, match="order"):
        resample_affine(a, np.eye(3), np.zeros(3), a.shape, order=3)
