"""`petcohort quantify` backend: NIfTI and store inputs, text rendering."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from petcohort.engine.errors import GridError, InputError
from petcohort.engine.kernels.lesions import quantify
from petcohort.pipelines.quantify_cli import quantify_files, render_text


def _volumes():
    pet = np.ones((12, 10, 8), np.float32)          # (Z, Y, X)
    mask = np.zeros(pet.shape, np.uint8)
    pet[2:4, 2:5, 2:4] = 5.0
    mask[2:4, 2:5, 2:4] = 1
    pet[8:10, 6:8, 5:7] = 3.0
    mask[8:10, 6:8, 5:7] = 1
    return pet, mask


def _save(tmp_path, name, zyx, zooms=(4.0, 3.0, 2.0)):
    affine = np.diag([zooms[2], zooms[1], zooms[0], 1.0])   # NIfTI axes are (x, y, z)
    path = tmp_path / name
    nib.save(nib.Nifti1Image(np.ascontiguousarray(zyx.T), affine), str(path))
    return str(path)


def test_nifti_roundtrip_matches_kernel(tmp_path):
    pet, mask = _volumes()
    p = _save(tmp_path, "pet.nii.gz", pet)
    m = _save(tmp_path, "mask.nii.gz", mask)
    res = quantify_files(p, m, radius_mm=6.2035, connectivity=26)
    ref = quantify(pet, mask, spacing=(4.0, 3.0, 2.0)).study
    assert res["input"]["spacing"] == [4.0, 3.0, 2.0]
    for key in ("lesion_count", "mtv_ml", "tlg", "suvmax", "suvmean", "suvpeak", "local_peak", "kernel_voxels"):
        assert res["study"][key] == pytest.approx(ref[key]), key
    assert res["study"]["lesion_count"] == 2
    assert res["study"]["sulpeak"] is None and res["study"]["sulpeak_reason"] == "SUL_UNAVAILABLE"
    json.dumps(res)                                          # JSON-ready
    text = render_text(res)
    assert "lesion_count" in text and "SUL_UNAVAILABLE" in text and "mtv_ml" in text
    assert len([ln for ln in text.splitlines() if ln.strip().startswith(("1 ", "2 "))]) == 2


def test_ct_in_hu_works(tmp_path):
    pet, mask = _volumes()
    ct = (pet * 100 - 1000).astype(np.int16)
    res = quantify_files(_save(tmp_path, "ct.nii.gz", ct), _save(tmp_path, "m.nii.gz", mask),
                         radius_mm=6.0, connectivity=6)
    assert res["study"]["suvmax"] == pytest.approx(-500.0)


def test_grid_and_file_errors(tmp_path):
    pet, mask = _volumes()
    p = _save(tmp_path, "pet.nii.gz", pet)
    with pytest.raises(GridError):
        quantify_files(p, _save(tmp_path, "m1.nii.gz", mask[:-1]), radius_mm=6.2, connectivity=26)
    with pytest.raises(GridError):
        quantify_files(p, _save(tmp_path, "m2.nii.gz", mask, zooms=(4.0, 3.0, 2.5)), radius_mm=6.2, connectivity=26)
    with pytest.raises(InputError) as e:
        quantify_files(str(tmp_path / "nope.nii.gz"), p, radius_mm=6.2, connectivity=26)
    assert e.value.reason == "FILE_NOT_FOUND"
    bad = pet.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError) as e:
        quantify_files(_save(tmp_path, "bad.nii.gz", bad), _save(tmp_path, "m3.nii.gz", mask),
                       radius_mm=6.2, connectivity=26)
    assert e.value.reason == "IMAGE_NOT_FINITE"


def test_store_reference():
    from petcohort.storage.store import CohortStore

    pet, mask = _volumes()
    store = CohortStore.create("memory://quantify-cli-test", exist_ok=True)
    key = "P-00000000aa-T0"
    if key not in store.study_keys():
        store.add_study(key, {"spacing": [4.0, 3.0, 2.0], "origin": [10.0, 0.0, 0.0], "timepoint": 0,
                              "sul_per_suvbw": 0.75})
        store.write_arrays(key, {"pet": pet, "seg/manual": mask})
    res = quantify_files(f"memory://quantify-cli-test::{key}", f"memory://quantify-cli-test::{key}::seg/manual",
                         radius_mm=6.2035, connectivity=26)
    assert res["study"]["sulpeak"] == pytest.approx(0.75 * res["study"]["suvpeak"])
    assert res["input"]["centroid_frame"] == "lps_origin"
    with pytest.raises(InputError) as e:
        quantify_files("memory://quantify-cli-test::", "x.nii.gz", radius_mm=6.2, connectivity=26)
    assert e.value.reason == "BAD_STORE_REF"


def test_label_map_mask_keeps_its_lesions(tmp_path):
    """A NIfTI label map: touching labels stay two lesions (as at ingest); a probability map stays binary."""
    pet = np.ones((12, 10, 8), np.float32)
    labels = np.zeros(pet.shape, np.uint16)
    labels[2:4, 2:5, 2:4] = 1
    labels[2:4, 2:5, 4:6] = 2            # touches label 1
    pet[labels == 1], pet[labels == 2] = 5.0, 3.0
    p = _save(tmp_path, "pet.nii.gz", pet)
    res = quantify_files(p, _save(tmp_path, "labels.nii.gz", labels), radius_mm=6.2035, connectivity=26)
    assert res["study"]["lesion_count"] == 2 and sorted(les["segment"] for les in res["lesions"]) == [1, 2]
    assert sorted(les["suvmax"] for les in res["lesions"]) == [3.0, 5.0]
    binary = quantify_files(p, _save(tmp_path, "bin.nii.gz", (labels != 0).astype(np.uint8)), radius_mm=6.2035,
                            connectivity=26)
    assert binary["study"]["lesion_count"] == 1
    prob = quantify_files(p, _save(tmp_path, "prob.nii.gz", (labels != 0) * np.float32(0.7)), radius_mm=6.2035,
                          connectivity=26)
    assert prob["study"]["lesion_count"] == 1
