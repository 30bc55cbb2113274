"""NIfTI IO (storage/nifti.py): axis convention (RAS affine vs our LPS (Z, Y, X)) and autoPET folders."""
import json
import tempfile

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from petcohort.engine.errors import InputError
from petcohort.storage.nifti import (is_autopet_folder, read_nifti, read_sidecar, read_study_folder, write_nifti,
                                     write_study_folder)

SPACING, ORIGIN = (3.0, 2.5, 2.0), (-120.0, -40.0, -55.0)


def _vol(shape=(4, 5, 6), dtype=np.float32):
    return np.arange(np.prod(shape)).reshape(shape).astype(dtype)


def test_round_trip_and_affine(tmp_path):
    vol = _vol()
    write_nifti(tmp_path / "a.nii.gz", vol, spacing=SPACING, origin=ORIGIN)
    back, spacing, origin = read_nifti(tmp_path / "a.nii.gz")
    np.testing.assert_array_equal(back, vol)
    assert back.dtype == np.float32 and spacing == pytest.approx(SPACING) and origin == pytest.approx(ORIGIN)
    img = nib.load(tmp_path / "a.nii.gz")
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    # voxel (z=1, y=2, x=3) is data[3, 2, 1]; its LPS centre (ox + 3 sx, oy + 2 sy, oz + sz) is RAS (-x, -y, z)
    assert np.asarray(img.dataobj)[3, 2, 1] == vol[1, 2, 3]
    ras = img.affine @ [3, 2, 1, 1]
    assert ras[:3] == pytest.approx([-(-55.0 + 3 * 2.0), -(-40.0 + 2 * 2.5), -120.0 + 3.0])


def test_other_axis_orders_are_reoriented(tmp_path):
    vol = _vol()
    write_nifti(tmp_path / "a.nii.gz", vol, spacing=SPACING, origin=ORIGIN)
    ras = nib.as_closest_canonical(nib.load(tmp_path / "a.nii.gz"))   # same image stored R-A-S
    assert nib.aff2axcodes(ras.affine) == ("R", "A", "S")
    nib.save(ras, tmp_path / "ras.nii.gz")
    back, spacing, origin = read_nifti(tmp_path / "ras.nii.gz")
    np.testing.assert_array_equal(back, vol)
    assert spacing == pytest.approx(SPACING) and origin == pytest.approx(ORIGIN)


def test_oblique_and_4d_refused(tmp_path):
    aff = np.eye(4)
    c, s = np.cos(0.3), np.sin(0.3)
    aff[:2, :2] = [[c, -s], [s, c]]
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3), np.float32), aff), tmp_path / "obl.nii.gz")
    with pytest.raises(InputError) as e:
        read_nifti(tmp_path / "obl.nii.gz")
    assert e.value.reason == "NIFTI_OBLIQUE"
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, 2), np.float32), np.eye(4)), tmp_path / "t.nii.gz")
    with pytest.raises(InputError) as e:
        read_nifti(tmp_path / "t.nii.gz")
    assert e.value.reason == "NIFTI_NOT_3D"


def test_study_folder_round_trip(tmp_path):
    pet, ct = _vol() / 10, (_vol() - 60).astype(np.int16)
    seg = (pet > 5).astype(np.uint8)
    meta = {"patient_id": "X1", "weight_kg": 61.0, "height_m": 1.62, "sex": "F", "injected_dose_bq": 2.2e8,
            "scan_datetime": "2024-03-01T10:00:00", "timepoint": 0, "site": "A", "scanner": "Vereos"}
    write_study_folder(tmp_path / "s", pet=pet, ct=ct, seg=seg, spacing=SPACING, origin=ORIGIN, meta=meta)
    assert is_autopet_folder(tmp_path / "s")
    study = read_study_folder(tmp_path / "s")
    np.testing.assert_array_equal(study.pet, pet.astype(np.float32))
    np.testing.assert_array_equal(study.ct, ct)
    np.testing.assert_array_equal(study.seg, seg)
    assert study.pet.dtype == np.float32 and study.ct.dtype == np.int16 and study.seg.dtype == np.uint8
    assert study.meta == meta and study.spacing == pytest.approx(SPACING)


def test_autopet_folder_without_sidecar(tmp_path):
    folder = tmp_path / "PETCT_0af7ffe12a" / "08-12-2005-NA-PET-CT Ganzkoerper-12345"
    write_study_folder(folder, pet=_vol(), ct=_vol().astype(np.int16), seg=None, spacing=SPACING, origin=ORIGIN,
                       meta={})
    (folder / "study.json").unlink()
    assert read_sidecar(folder) == {"patient_id": "PETCT_0af7ffe12a", "study_date": "2005-08-12"}
    assert read_study_folder(folder).seg is None


def test_bad_study_folders(tmp_path):
    with pytest.raises(InputError) as e:
        read_study_folder(tmp_path)
    assert e.value.reason == "NIFTI_MISSING_FILE"
    write_study_folder(tmp_path / "s", pet=_vol(), ct=_vol().astype(np.int16), seg=None, spacing=SPACING,
                       origin=ORIGIN, meta={})
    write_nifti(tmp_path / "s" / "CTres.nii.gz", _vol((4, 5, 7)), spacing=SPACING, origin=ORIGIN)
    with pytest.raises(InputError) as e:
        read_study_folder(tmp_path / "s")
    assert e.value.reason == "GRID_MISMATCH"
    (tmp_path / "s" / "study.json").write_text(json.dumps([1, 2]))
    with pytest.raises(InputError) as e:
        read_sidecar(tmp_path / "s")
    assert e.value.reason == "NIFTI_BAD_SIDECAR"


@settings(max_examples=15, deadline=None)
@given(shape=st.tuples(*[st.integers(1, 5)] * 3),
       spacing=st.tuples(*[st.floats(0.5, 5.0)] * 3),
       origin=st.tuples(*[st.floats(-300.0, 300.0)] * 3),
       dtype=st.sampled_from([np.float32, np.int16, np.uint8]))
def test_read_write_property(shape, spacing, origin, dtype):
    vol = (np.arange(np.prod(shape)) % 97).reshape(shape).astype(dtype)
    with tempfile.TemporaryDirectory() as tmp:
        write_nifti(f"{tmp}/a.nii.gz", vol, spacing=spacing, origin=origin)
        back, sp, org = read_nifti(f"{tmp}/a.nii.gz")
    np.testing.assert_array_equal(back, vol)
    assert back.dtype == vol.dtype
    # NIfTI stores the affine in float32 (sform/qform)
    np.testing.assert_allclose(sp, spacing, rtol=1e-6)
    np.testing.assert_allclose(org, origin, rtol=1e-6, atol=1e-4)
