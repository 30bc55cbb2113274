"""Analytic solids, rasterisation in bounding boxes, lesion solids, image formation."""
from __future__ import annotations

import numpy as np
import pytest
from petcohort.engine.phantom.lesions import Lesion, LesionState, LumpySolid
from petcohort.engine.phantom.physics import pet_noise, psf_blur
from petcohort.engine.phantom.render import paint_classes, render_truth
from petcohort.engine.phantom.shapes import (
    Capsule,
    Grid,
    ProfiledCylinder,
    Superquadric,
    rotation,
)
from petcohort.engine.phantom.tissues import N_TISSUES, T
from scipy import ndimage as ndi

GRID = Grid((60, 60, 60), (1.0, 1.0, 1.0), (-29.5, -29.5, -29.5))


def _full(shape):
    z = GRID.axis(0)[:, None, None]
    y = GRID.axis(1)[None, :, None]
    x = GRID.axis(2)[None, None, :]
    return np.broadcast_to(shape.inside(z, y, x), GRID.shape)


def test_ellipsoid_volume_and_bbox_painting():
    e = Superquadric((0.0, 3.0, -2.0), (20.0, 12.0, 8.0))
    classes = paint_classes([(T.LIVER, e)], GRID)
    assert int((classes == T.LIVER).sum()) == pytest.approx(4 / 3 * np.pi * 20 * 12 * 8, rel=0.03)
    # painting only inside the box gives the same voxels as a full evaluation
    assert np.array_equal(classes == T.LIVER, _full(e))


def test_rotated_superquadric_matches_full_evaluation():
    s = Superquadric((2.0, -1.0, 0.0), (18.0, 5.0, 9.0), 2.6, rotation("z", 35.0) @ rotation("x", 20.0))
    classes = paint_classes([(T.CORTICAL, s)], GRID)
    assert np.array_equal(classes == T.CORTICAL, _full(s))
    lo, hi = s.bbox()
    zz, yy, xx = np.nonzero(classes)
    pts = np.stack([GRID.axis(0)[zz], GRID.axis(1)[yy], GRID.axis(2)[xx]], 1)
    assert (pts >= lo - 1e-9).all() and (pts <= hi + 1e-9).all()


def test_capsule_and_profiled_cylinder():
    c = Capsule((-20.0, 0.0, 0.0), (20.0, 0.0, 0.0), 5.0)
    vol = int(_full(c).sum())
    assert vol == pytest.approx(np.pi * 25 * 40 + 4 / 3 * np.pi * 125, rel=0.05)
    cyl = ProfiledCylinder((-20.0, 20.0), (10.0, 20.0), (10.0, 10.0), (0.0, 0.0), (0.0, 0.0))
    m = _full(cyl)
    assert not m[GRID.axis(0) < -20].any() and not m[GRID.axis(0) > 20].any()
    # the half-width grows linearly with z: the upper slices are wider
    assert m[45].sum() > m[15].sum() > 0


def test_paint_order_and_offset():
    big = Superquadric((0.0, 0.0, 0.0), (20.0, 20.0, 20.0))
    small = Superquadric((0.0, 0.0, 0.0), (6.0, 6.0, 6.0))
    cls = paint_classes([(T.MUSCLE, big), (T.BLADDER, small)], GRID)
    assert cls[30, 30, 30] == T.BLADDER and cls[30, 30, 45] == T.MUSCLE and cls[0, 0, 0] == T.AIR
    moved = paint_classes([(T.BLADDER, small)], GRID, offset=(0.0, 0.0, 10.0))
    assert moved[30, 30, 40] == T.BLADDER and moved[30, 30, 30] == T.AIR


def _lesion(organ="liver", necrosis=0.0):
    lobes = np.array([[1.0, 0.0, 0.0, 0.1, 0.3], [0.0, 0.6, 0.8, 0.08, 1.0]])
    return Lesion(1, organ, organ, (0.0, 0.0, 0.0), (8.0, 7.0, 9.0), np.eye(3), lobes, 6.0, necrosis,
                  "hypodense", 20.0)


def test_lumpy_lesion_is_irregular_and_scales():
    les = _lesion()
    v1 = int(_full(LumpySolid(les, 1.0)).sum())
    v2 = int(_full(LumpySolid(les, 0.5)).sum())
    assert v2 == pytest.approx(v1 / 8, rel=0.15)
    m = _full(LumpySolid(les, 1.0))
    # irregular: not equal to its ellipsoid
    ell = _full(Superquadric((0.0, 0.0, 0.0), (8.0, 7.0, 9.0)))
    assert (m ^ ell).sum() > 0.05 * ell.sum()
    lo, _ = LumpySolid(les, 1.0).bbox()
    assert (np.array(np.nonzero(m)).min(1) - 29.5 >= lo - 1).all()


def test_render_truth_clips_to_host_and_sets_values():
    suv = np.zeros(N_TISSUES, np.float32)
    hu = np.zeros(N_TISSUES, np.float32)
    suv[T.LIVER], hu[T.LIVER] = 2.0, 60.0
    suv[T.MUSCLE], hu[T.MUSCLE] = 0.8, 45.0
    # liver occupies x < 0 only; the lesion straddles x = 0
    cls = np.full(GRID.shape, T.MUSCLE, np.uint8)
    cls[:, :, :30] = T.LIVER
    truth = render_truth(cls, GRID, [(_lesion(), LesionState(1.0, 6.0))], suv, hu)
    ids = truth.lesion_ids
    assert ids.any() and (cls[ids > 0] == T.LIVER).all()
    assert truth.suv[ids > 0].max() == pytest.approx(6.0, rel=0.05)
    assert np.allclose(truth.hu[ids > 0], 40.0)  # hypodense: 20 HU below the liver
    assert truth.lesion_info[0]["voxels"] == int((ids > 0).sum())
    necrotic = render_truth(cls, GRID, [(_lesion(necrosis=0.5), LesionState(1.0, 6.0))], suv, hu)
    assert necrotic.suv[30, 30, 27] < 0.5 * necrotic.suv[ids > 0].max()


def test_psf_preserves_counts_and_noise_level():
    img = np.zeros(GRID.shape, np.float32)
    img[20:40, 20:40, 20:40] = 2.0
    blurred = psf_blur(img, GRID.spacing, 5.0)
    assert blurred.sum() == pytest.approx(img.sum(), rel=1e-4)
    assert blurred[30, 30, 30] == pytest.approx(2.0, rel=1e-3)
    noisy = pet_noise(blurred, np.random.default_rng(0), cov_liver=0.12, liver_suv=2.0)
    core = noisy[25:35, 25:35, 25:35]
    assert core.std() / core.mean() == pytest.approx(0.12, rel=0.15)
    assert noisy.min() >= 0 and noisy.dtype == np.float32
    assert ndi.mean(noisy, img > 0) == pytest.approx(ndi.mean(blurred, img > 0), rel=0.01)
