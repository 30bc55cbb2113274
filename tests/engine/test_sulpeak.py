"""SULpeak (IBSI global/local intensity peak): hand cases and brute force vs fast path."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from petcohort.engine.errors import GridError, InputError
from petcohort.engine.kernels.label import label
from petcohort.engine.kernels.sulpeak import (DEFAULT_RADIUS_MM, kernel_size, lesion_peaks, peak,
                                             sphere_offsets)


def brute_force(image, mask, spacing, radius):
    """Explicit loop over mask voxels, explicit distance test to every image voxel."""
    Z, Y, X = image.shape
    zz, yy, xx = np.meshgrid(np.arange(Z), np.arange(Y), np.arange(X), indexing="ij")
    means = {}
    for z, y, x in zip(*np.nonzero(mask)):
        d = np.sqrt(((zz - z) * spacing[0]) ** 2 + ((yy - y) * spacing[1]) ** 2 + ((xx - x) * spacing[2]) ** 2)
        inside = d <= radius * (1 + 1e-12)
        means[(z, y, x)] = float(image[inside].astype(np.float64).mean())
    hottest = max(float(image[k]) for k in means)
    local = max(m for k, m in means.items() if float(image[k]) == hottest)
    return max(means.values()), local


def test_default_radius_is_one_ml_sphere():
    assert DEFAULT_RADIUS_MM == pytest.approx((3 / (4 * math.pi)) ** (1 / 3) * 10, abs=1e-4)


def test_kernel_hand_counts():
    # r = 2 mm on 2 mm voxels: centre + 6 face neighbours (distance exactly r is included)
    assert sphere_offsets((2, 2, 2), 2.0).shape[0] == 7
    # r just below 2 mm: the centre only
    assert sphere_offsets((2, 2, 2), 1.999).shape[0] == 1
    # anisotropic: 4 mm slices, 2 mm in-plane, r = 2: centre + 4 in-plane faces
    assert sphere_offsets((4, 2, 2), 2.0).shape[0] == 5
    kv, kml = kernel_size((2, 2, 2), 2.0)
    assert kv == 7 and kml == pytest.approx(7 * 8 / 1000)


def test_hand_computed_border_and_ties():
    img = np.zeros((3, 3, 3), np.float32)
    img[1, 1, 1] = 10.0
    img[0, 0, 0] = 10.0          # tie for the hottest voxel, in a corner
    mask = np.zeros_like(img, dtype=np.uint8)
    mask[1, 1, 1] = 1
    mask[0, 0, 0] = 1
    res = peak(img, mask, spacing=(1, 1, 1), radius_mm=1.0)
    # centre (1,1,1): 7 in-image neighbours, sum 10 -> 10/7; corner: 4 in-image neighbours, sum 10 -> 2.5
    assert res.global_peak == pytest.approx(2.5)
    assert res.peak_voxel == (0, 0, 0)
    assert res.local_peak == pytest.approx(2.5)   # ties -> the highest of the tied neighbourhood means
    assert res.kernel_voxels == 7 and res.kernel_ml == pytest.approx(0.007) and res.voxels == 2


def test_local_peak_differs_from_global():
    img = np.ones((5, 5, 9), np.float32)
    img[2, 2, 1] = 5.0   # hottest voxel, isolated
    img[2, 2, 5:8] = 4.0  # warm cluster with a higher mean around it
    mask = np.zeros(img.shape, np.uint8)
    mask[2, 2, 1:8] = 1
    res = peak(img, mask, spacing=(1, 1, 1), radius_mm=1.0)
    assert res.hottest_voxel == (2, 2, 1)
    assert res.local_peak == pytest.approx((5 + 6) / 7)
    assert res.global_peak == pytest.approx((4 * 3 + 4) / 7)
    assert res.peak_voxel == (2, 2, 6)


def test_empty_mask_and_errors():
    img = np.ones((4, 4, 4), np.float32)
    res = peak(img, np.zeros_like(img), spacing=(2, 2, 2))
    assert res.reason == "EMPTY_MASK" and res.global_peak is None and res.local_peak is None
    assert res.voxels == 0 and res.kernel_voxels > 0
    with pytest.raises(GridError) as e:
        peak(img, np.zeros((4, 4, 3)), spacing=(2, 2, 2))
    assert e.value.reason == "GRID_MISMATCH"
    bad = img.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError) as e:
        peak(bad, np.ones_like(img), spacing=(2, 2, 2))
    assert e.value.reason == "IMAGE_NOT_FINITE"
    bad[0, 0, 0] = np.inf
    with pytest.raises(InputError):
        peak(bad, np.ones_like(img), spacing=(2, 2, 2))
    with pytest.raises(InputError) as e:
        peak(img, np.ones_like(img), spacing=(2, 0, 2))
    assert e.value.reason == "BAD_GEOMETRY"
    with pytest.raises(InputError):
        peak(img, np.ones_like(img), spacing=(2, 2, 2), radius_mm=-1)


def test_lesion_peaks_missing_label_is_empty():
    img = np.random.default_rng(1).random((6, 6, 6)).astype(np.float32)
    labels = np.zeros(img.shape, np.int32)
    labels[1, 1, 1] = 1
    labels[4, 4, 4] = 3          # label 2 absent
    res = lesion_peaks(img, labels, 3, spacing=(2, 2, 2))
    assert [r.reason for r in res] == [None, "EMPTY_MASK", None]
    assert lesion_peaks(img, labels, 0, spacing=(2, 2, 2)) == []


@st.composite
def cases(draw):
    shape = tuple(draw(st.integers(2, 9)) for _ in range(3))
    spacing = tuple(draw(st.floats(0.7, 5.0)) for _ in range(3))
    radius = draw(st.sampled_from([DEFAULT_RADIUS_MM, 6.0, 3.3, 1.0]))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    rng = np.random.default_rng(seed)
    image = (rng.random(shape) * 10).astype(np.float32)
    if draw(st.booleans()):   # integer-valued image -> many ties for the hottest voxel
        image = np.floor(image / 3).astype(np.float32)
    mask = (rng.random(shape) < draw(st.floats(0.02, 0.5))).astype(np.uint8)
    # a lesion touching the image border
    mask[0, :, rng.integers(shape[2])] = 1
    return image, mask, spacing, radius


@settings(max_examples=40, deadline=None)
@given(cases())
def test_peak_matches_brute_force(case):
    image, mask, spacing, radius = case
    res = peak(image, mask, spacing=spacing, radius_mm=radius)
    g, loc = brute_force(image, mask, spacing, radius)
    assert res.global_peak == pytest.approx(g, rel=1e-9, abs=1e-9)
    assert res.local_peak == pytest.approx(loc, rel=1e-9, abs=1e-9)


@settings(max_examples=25, deadline=None)
@given(cases(), st.sampled_from([6, 18, 26]))
def test_lesion_peaks_match_brute_force_per_component(case, connectivity):
    image, mask, spacing, radius = case
    labels, n = label(mask, connectivity=connectivity)
    res = lesion_peaks(image, labels, n, spacing=spacing, radius_mm=radius)
    assert len(res) == n
    for i, r in enumerate(res, start=1):
        g, loc = brute_force(image, labels == i, spacing, radius)
        assert r.global_peak == pytest.approx(g, rel=1e-9, abs=1e-9)
        assert r.local_peak == pytest.approx(loc, rel=1e-9, abs=1e-9)


def test_gpu_host_reduction_with_emulated_kernel(monkeypatch):
    """The GPU path's host-side grouping, with the CUDA kernel emulated in numpy (runs without a GPU)."""
    from petcohort.engine.kernels import sulpeak as mod

    def emulated(image, flat_centres, offsets):   # same loop as the CUDA source, one "thread" per centre
        shape = image.shape
        out = np.empty(len(flat_centres))
        for i, c in enumerate(flat_centres):
            z, y, x = np.unravel_index(c, shape)
            vals = [image[z + dz, y + dy, x + dx] for dz, dy, dx in offsets
                    if 0 <= z + dz < shape[0] and 0 <= y + dy < shape[1] and 0 <= x + dx < shape[2]]
            out[i] = np.mean(np.asarray(vals, dtype=np.float64))
        return out

    monkeypatch.setattr(mod, "_means_gpu", emulated)
    rng = np.random.default_rng(5)
    image = np.floor(rng.random((7, 8, 9)) * 4).astype(np.float32)
    labels, n = label((rng.random(image.shape) < 0.2).astype(np.uint8), connectivity=6)
    labels[labels == 2] = 0                       # a missing label in the middle
    offsets = sphere_offsets((2.0, 3.0, 2.5), 6.2035)
    gpu_like = mod._peaks_gpu(image, labels, n, offsets, len(offsets), 1.0)
    cpu = lesion_peaks(image, labels, n, spacing=(2.0, 3.0, 2.5))
    for g, c in zip(gpu_like, cpu):
        assert g.reason == c.reason
        if c.reason is None:
            assert g.global_peak == pytest.approx(c.global_peak, rel=1e-9)
            assert g.local_peak == pytest.approx(c.local_peak, rel=1e-9)
            assert g.peak_voxel == c.peak_voxel and g.hottest_voxel == c.hottest_voxel


def test_lesions_evaluated_together_equal_each_alone_bitwise():
    """Issue 12: all lesions' peaks come from one pass; each equals the lesion evaluated on its own, to the bit.

    Row prefix sums start at each lesion's own box, so neighbouring lesions sharing image rows (and an empty
    label, and labels above ``n``) change nothing; the ``voxels`` shortcut gives the same results.
    """
    from petcohort.engine.kernels.label import lesion_voxels

    rng = np.random.default_rng(11)
    for case in range(40):
        shape = tuple(int(v) for v in rng.integers(4, 30, 3))
        image = (rng.gamma(2.0, 1.5, shape) * rng.choice([1e-6, 1.0, 1e4])).astype(np.float32)
        image[rng.random(shape) < 0.2] = 0.0
        labels, n = label(rng.random(shape) < rng.choice([0.02, 0.1, 0.4]), connectivity=6)
        if n > 2:
            labels[labels == 2] = 0                             # an empty label inside 1..n
        spacing = tuple(float(v) for v in rng.choice([1.0, 2.0, 3.27, 4.0], 3))
        radius = float(rng.choice([2.5, DEFAULT_RADIUS_MM, 9.0]))
        together = lesion_peaks(image, labels, n, spacing=spacing, radius_mm=radius)
        assert together == lesion_peaks(image, labels, n, spacing=spacing, radius_mm=radius,
                                        voxels=lesion_voxels(labels))
        assert lesion_peaks(image, labels, max(n - 1, 0), spacing=spacing, radius_mm=radius) == together[:n - 1]
        for i in range(1, n + 1):
            alone = lesion_peaks(image, (labels == i).astype(np.int32), 1, spacing=spacing, radius_mm=radius)[0]
            assert alone == together[i - 1], (case, i)
