"""One implementation each: the SULpeak/reference sphere, the organ-majority rule, the percent change,
NIfTI reading (issue 11, item 4): the callers give the results of the one kept implementation."""
from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest

from petcohort.engine.kernels.lesions import lesion_organs, majority_organ, organ_voxel_counts, quantify
from petcohort.engine.kernels.reference import liver_reference
from petcohort.engine.kernels.sulpeak import sphere_offsets
from petcohort.engine.stats.percist import organ_of_lesions


def _closed_ball(radius_mm: float, spacing) -> np.ndarray:
    """The liver ROI as reference.py drew it before the merge (kept here as the oracle)."""
    sz, sy, sx = spacing
    hz, hy, hx = (int(math.floor(radius_mm / s)) for s in (sz, sy, sx))
    z, y, x = np.mgrid[-hz:hz + 1, -hy:hy + 1, -hx:hx + 1]
    inside = (z * sz) ** 2 + (y * sy) ** 2 + (x * sx) ** 2 <= radius_mm ** 2
    return np.stack([z[inside], y[inside], x[inside]], axis=1)


@pytest.mark.parametrize("spacing", [(2.0, 2.0, 2.0), (3.0, 4.0, 4.0), (2.03642, 4.0728, 4.0728),
                                     (5.0, 2.5, 2.5), (3.27, 3.65, 3.65)])
@pytest.mark.parametrize("radius", [15.0, 6.2035, 6.0])
def test_reference_sphere_is_the_sulpeak_sphere(spacing, radius):
    assert np.array_equal(sphere_offsets(spacing, radius), _closed_ball(radius, spacing))


def test_liver_reference_uses_the_sphere():
    rng = np.random.default_rng(3)
    sul = rng.uniform(1.0, 2.0, (30, 30, 30))
    liver = np.zeros(sul.shape, bool)
    liver[3:27, 3:27, 3:27] = True
    ref = liver_reference(sul, liver, spacing=(2.0, 2.0, 2.0))
    idx = sphere_offsets((2.0, 2.0, 2.0), 15.0) + np.asarray(ref.centre_zyx)
    vals = sul[idx[:, 0], idx[:, 1], idx[:, 2]]
    assert ref.source == "liver" and ref.n_voxels == len(vals) and ref.mean == pytest.approx(vals.mean(), abs=0)


def test_organ_rule_is_shared():
    labels = np.zeros((8, 6, 6), np.int32)  # lesions two slices apart: separate connected components
    labels[0, 0, :4] = 1          # 2 bone, 2 liver: tie -> bone
    labels[2, 0, :3] = 2          # 1 liver, 2 other -> other
    labels[4, 0, :2] = 3          # 1 bone, 1 other: tie -> bone
    labels[6, 0, :2] = 4          # 2 liver -> liver
    bone = np.zeros(labels.shape, np.uint8)
    liver = np.zeros(labels.shape, np.uint8)
    bone[0, 0, :2] = 1
    liver[0, 0, 2:4] = 1
    liver[2, 0, 0] = 1
    bone[4, 0, 0] = 1
    liver[6, 0, :2] = 1
    expect = {1: "bone", 2: "other", 3: "bone", 4: "liver"}
    assert lesion_organs(labels, 4, bone=bone, liver=liver) == expect
    assert organ_of_lesions(labels, 4, bone=bone, liver=liver) == expect
    q = quantify(np.ones(labels.shape, np.float32), labels > 0, spacing=(2, 2, 2), connectivity=6,
                 bone=bone, liver=liver)
    assert {les["lesion"]: les["organ"] for les in q.lesions} == expect
    b, li, o = organ_voxel_counts(labels, 4, bone=bone, liver=liver)
    assert list(b) == [0, 2, 0, 1, 0] and list(li) == [0, 2, 1, 0, 2] and list(o[1:]) == [0, 2, 1, 0]
    assert organ_of_lesions(labels, 4) == dict.fromkeys(range(1, 5), "other")
    assert majority_organ(1, 1, 1) == "bone" and majority_organ(0, 1, 1) == "liver"


def test_quantify_organ_counts_random():
    """quantify's per-lesion organ and PBI/PLI match the shared counts on random masks."""
    rng = np.random.default_rng(7)
    mask = rng.random((20, 18, 16)) > 0.7
    bone = rng.random(mask.shape) > 0.6
    liver = (rng.random(mask.shape) > 0.7) & ~bone
    q = quantify(rng.uniform(0.5, 3, mask.shape), mask, spacing=(2, 2, 2), connectivity=6, bone=bone, liver=liver)
    n = len(q.lesions)
    assert [les["organ"] for les in q.lesions] == [v for _, v in sorted(lesion_organs(q.labels, n, bone=bone,
                                                                                      liver=liver).items())]
    b, li, _ = organ_voxel_counts(q.labels, n, bone=bone, liver=liver)
    assert q.study["pbi"] == b[1:].sum() / bone.sum() and q.study["pli"] == li[1:].sum() / liver.sum()


def test_read_totalseg_uses_the_nifti_reader(tmp_path):
    from petcohort.pipelines.stage_organs import read_totalseg
    from petcohort.storage.nifti import read_nifti

    zyx = np.zeros((6, 5, 4), np.uint8)
    zyx[1:3, 1:3, 1:3] = 5                       # liver in TotalSegmentator v2
    affine = np.diag([2.0, 3.0, 4.0, 1.0])       # RAS-stored, as TotalSegmentator writes: reoriented on read
    nib.save(nib.Nifti1Image(np.ascontiguousarray(zyx.T), affine), str(tmp_path / "ml.nii.gz"))
    got = read_totalseg(tmp_path / "ml.nii.gz")
    assert np.array_equal(got, read_nifti(tmp_path / "ml.nii.gz")[0]) and got.dtype == np.uint8
    assert np.array_equal(got, zyx[:, ::-1, ::-1])  # R->L and A->P flips
    folder = tmp_path / "seg"
    folder.mkdir()
    nib.save(nib.Nifti1Image(np.ascontiguousarray((zyx == 5).T.astype(np.uint8)), affine),
             str(folder / "liver.nii.gz"))
    assert np.array_equal(read_totalseg(folder), got)
