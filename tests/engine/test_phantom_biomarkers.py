"""The quantification kernels recover what the generator painted (truth masks -> true biomarkers)."""
import numpy as np
import pytest

from petcohort.engine.kernels.lesions import quantify
from petcohort.engine.phantom.design import design_patient
from petcohort.engine.phantom.study import simulate_study


@pytest.fixture(scope="module")
def study():
    design = design_patient(7, 0, sites=2, scale=0.5)
    return simulate_study(design, 0, seed=7, voxel_mm=6.0)


def test_truth_volumes_counts_and_organ_indices(study):
    s = study
    sp = s.grid.spacing
    ids = s.lesion_ids
    painted = [les for les in s.lesions if les["voxels"] > 0]
    q = quantify(s.pet_clean, ids > 0, spacing=sp, bone=s.masks["organs/bone"], liver=s.masks["organs/liver"])
    voxel_ml = float(np.prod(sp)) / 1000.0
    # MTV: the painted volumes, exactly (voxel counts x voxel volume)
    assert q.study["mtv_ml"] == pytest.approx(sum(les["volume_ml"] for les in painted), rel=1e-9)
    assert q.study["mtv_ml"] == pytest.approx((ids > 0).sum() * voxel_ml, rel=1e-9)
    # lesion count: touching painted lesions merge into one component, never more components than lesions
    assert 1 <= q.study["lesion_count"] <= len(painted)
    # PBI / PLI: painted bone (liver) lesion voxels over the organ mask volume
    bone_vox = sum(les["voxels"] for les in painted if les["organ"] == "bone")
    liver_vox = sum(les["voxels"] for les in painted if les["organ"] == "liver")
    assert q.study["pbi"] == pytest.approx(bone_vox / s.masks["organs/bone"].sum(), rel=1e-9)
    assert q.study["pli"] == pytest.approx(liver_vox / s.masks["organs/liver"].sum(), rel=1e-9)
    # TLG = sum of MTV x SUVmean per lesion, on the same image
    assert q.study["tlg"] == pytest.approx(sum(les["tlg"] for les in q.lesions), rel=1e-9)
    assert q.study["tlg"] == pytest.approx(float(s.pet_clean[ids > 0].sum(dtype=np.float64)) * voxel_ml, rel=1e-6)
    # SUVmax of the blurred truth never exceeds the hottest painted uptake
    assert q.study["suvmax"] <= max(les["suv_true"] for les in painted) + 1e-6
