"""DICOM series discovery/assembly (storage/dicom_read.py) and the writers' round trip."""
import datetime as dt
import pathlib
import shutil
import tempfile

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.uid import generate_uid

from petcohort.engine.errors import DicomError
from petcohort.storage.dicom_read import read_series, read_single_series, scan_dicom_tree
from petcohort.storage.dicom_write import decode_pet_int16, encode_pet_int16, write_ct_series, write_pet_series
from petcohort.storage.suv_header import suv_from_datasets

T0 = dt.datetime(2024, 3, 1, 10, 0, 0)
PAT = {"id": "ID-1", "weight_kg": 70.0, "height_m": 1.65, "sex": "F"}
SCAN = {"acquisition_datetime": T0, "injection_datetime": T0 - dt.timedelta(minutes=62), "dose_bq": 3.1e8,
        "half_life_s": 6586.2, "frame_duration_s": 150.0}
SPACING, ORIGIN = (3.0, 2.5, 2.0), (-120.0, -40.0, -55.0)


def _suv(shape=(6, 5, 7), seed=0):
    return np.random.default_rng(seed).gamma(2.0, 1.5, shape).astype(np.float32)


def _write(folder, suv=None, **kw):
    return write_pet_series(folder, _suv() if suv is None else suv, spacing=SPACING, origin=ORIGIN,
                            patient=PAT, scan=SCAN, **kw)


def _suv_read(folder):
    info, _ = read_single_series(folder)
    report = suv_from_datasets(list(info.headers))
    scale = report["suv_bw_factor"] if report["suv_bw_factor"] is not None else report["suv_bw_factors"]
    return read_series(info, scale=scale)


@pytest.mark.parametrize("kw", [{}, {"decay_correction": "NONE", "slice_offsets_s": np.arange(6) * 150.0},
                                {"units": "CNTS"}, {"units": "CNTS", "cnts_scale": "philips_acsf"},
                                {"units": "GML", "suv_type": "LBMJANMA"}, {"decay_correction": "ADMIN"}])
def test_write_read_round_trip(tmp_path, kw):
    """Acceptance: write -> read -> SUV factor -> the stored (decoded) SUV, bit for bit."""
    suv = _suv()
    written = _write(tmp_path / "pt", suv, **kw)
    vol = _suv_read(tmp_path / "pt")
    assert vol.array.dtype == np.float32 and vol.array.shape == suv.shape
    np.testing.assert_array_equal(vol.array, written["suv"])
    # and the decoded SUV is the input up to the int16 quantisation (half a slope step per slice)
    step = (np.abs(suv).max(axis=(1, 2)) / 32767)[:, None, None]
    assert np.all(np.abs(vol.array - suv) <= 0.51 * step + 1e-6 * np.abs(suv))
    assert vol.spacing == pytest.approx(SPACING) and vol.origin == pytest.approx(ORIGIN)


def test_encode_uses_int16_range_and_decodes():
    suv = _suv((3, 4, 5))
    suv[1] = 0.0                              # an empty slice keeps slope 1
    stored, slopes = encode_pet_int16(suv, 2.0e-4)
    assert stored.dtype == np.int16 and slopes.shape == (3,)
    assert np.abs(stored[0]).max() >= 32766 and np.abs(stored[2]).max() >= 32766
    assert slopes[1] == 1.0 and np.all(stored[1] == 0)
    decoded = decode_pet_int16(stored, slopes, 2.0e-4)
    assert decoded.dtype == np.float32
    np.testing.assert_allclose(decoded, suv, rtol=0, atol=float(suv.max()) / 32767)
    # hand check of one voxel: stored * slope * factor
    assert decoded[0, 0, 0] == np.float32(float(stored[0, 0, 0]) * slopes[0] * 2.0e-4)


def test_slices_sorted_by_position_not_file_order(tmp_path):
    suv = _suv()
    written = _write(tmp_path / "pt", suv)
    files = sorted((tmp_path / "pt").glob("*.dcm"))
    for i, p in enumerate(files):                 # reverse the file names and instance numbers
        p.rename(tmp_path / "pt" / f"x{len(files) - i:03d}.dcm")
    vol = _suv_read(tmp_path / "pt")
    np.testing.assert_array_equal(vol.array, written["suv"])


def test_flipped_axis_aligned_orientation(tmp_path):
    suv = _suv()
    written = _write(tmp_path / "pt", suv)
    nz, ny, nx = suv.shape

    def flip(ds):  # the same voxels stored right-to-left and bottom-to-top
        ds.ImageOrientationPatient = [-1, 0, 0, 0, -1, 0]
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x + (nx - 1) * SPACING[2], y + (ny - 1) * SPACING[1], z]
        ds.PixelData = ds.pixel_array[::-1, ::-1].copy().tobytes()
    for p in (tmp_path / "pt").glob("*.dcm"):
        ds = pydicom.dcmread(p)
        flip(ds)
        ds.save_as(p)
    vol = _suv_read(tmp_path / "pt")
    np.testing.assert_array_equal(vol.array, written["suv"])
    assert vol.origin == pytest.approx(ORIGIN)


def _mutate_one(path, fn):
    ds = pydicom.dcmread(path)
    fn(ds)
    ds.save_as(path)


def test_missing_slice(tmp_path):
    _write(tmp_path / "pt")
    sorted((tmp_path / "pt").glob("*.dcm"))[2].unlink()
    with pytest.raises(DicomError) as e:
        read_single_series(tmp_path / "pt")
    assert e.value.reason == "DICOM_MISSING_SLICES" and "1 slice" in e.value.message


def test_duplicate_slice(tmp_path):
    _write(tmp_path / "pt")
    src = sorted((tmp_path / "pt").glob("*.dcm"))[2]
    dup = tmp_path / "pt" / "dup.dcm"
    shutil.copy(src, dup)
    _mutate_one(dup, lambda ds: setattr(ds, "SOPInstanceUID", generate_uid()))
    with pytest.raises(DicomError) as e:
        read_single_series(tmp_path / "pt")
    assert e.value.reason == "DICOM_DUPLICATE_SLICES"


def test_uneven_spacing(tmp_path):
    _write(tmp_path / "pt")
    path = sorted((tmp_path / "pt").glob("*.dcm"))[3]
    _mutate_one(path, lambda ds: setattr(ds, "ImagePositionPatient",
                                         [*ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) + 1.1]))
    with pytest.raises(DicomError) as e:
        read_single_series(tmp_path / "pt")
    assert e.value.reason == "DICOM_UNEVEN_SPACING"


def test_oblique_refused(tmp_path):
    _write(tmp_path / "pt")
    c, s = np.cos(0.2), np.sin(0.2)
    for p in (tmp_path / "pt").glob("*.dcm"):
        _mutate_one(p, lambda ds: setattr(ds, "ImageOrientationPatient", [c, s, 0, -s, c, 0]))
    with pytest.raises(DicomError) as e:
        read_single_series(tmp_path / "pt")
    assert e.value.reason == "DICOM_OBLIQUE"


def test_mixed_series_and_tree_grouping(tmp_path):
    _write(tmp_path / "mixed")
    write_ct_series(tmp_path / "mixed", np.zeros((4, 5, 7)), spacing=(4.0, 2.5, 2.0), origin=ORIGIN,
                    patient=PAT, scan=SCAN)
    (tmp_path / "mixed" / "notes.txt").write_text("not dicom")
    series = scan_dicom_tree(tmp_path)
    assert sorted(s.modality for s in series) == ["CT", "PT"]
    assert len({s.study_uid for s in series}) == 1
    with pytest.raises(DicomError) as e:
        read_single_series(tmp_path / "mixed")
    assert e.value.reason == "DICOM_MIXED_SERIES"
    info, vol = read_single_series(tmp_path / "mixed", modality="CT")
    assert vol.array.shape == (4, 5, 7)
    with pytest.raises(DicomError) as e:
        read_single_series(tmp_path / "mixed", modality="MR")
    assert e.value.reason == "DICOM_NO_SERIES"


def test_ct_round_trip_in_hu(tmp_path):
    hu = np.random.default_rng(1).integers(-1000, 2000, (4, 5, 7)).astype(np.int16)
    out = write_ct_series(tmp_path / "ct", hu, spacing=(4.0, 2.5, 2.0), origin=ORIGIN, patient=PAT, scan=SCAN)
    np.testing.assert_array_equal(out["hu"], hu)
    _, vol = read_single_series(tmp_path / "ct")
    np.testing.assert_array_equal(vol.array, hu.astype(np.float32))
    ds = pydicom.dcmread(out["files"][0])
    assert float(ds.RescaleIntercept) == -1024 and ds.Modality == "CT"


def test_pet_header_content(tmp_path):
    out = _write(tmp_path / "pt")
    ds = pydicom.dcmread(out["files"][0])
    assert ds.Units == "BQML" and ds.DecayCorrection == "START" and "DECY" in ds.CorrectedImage
    assert ds.pixel_array.dtype == np.int16 and float(ds.PatientWeight) == 70.0 and ds.PatientSex == "F"
    item = ds.RadiopharmaceuticalInformationSequence[0]
    assert float(item.RadionuclideTotalDose) == 3.1e8 and float(item.RadionuclideHalfLife) == 6586.2
    # rescaled values are Bq/mL: SUV / factor, factor = W / (dose exp(-lambda 3720 s))
    factor = 70_000.0 / (3.1e8 * np.exp(-np.log(2) / 6586.2 * 3720.0))
    bqml = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope)
    np.testing.assert_allclose(bqml * factor, out["suv"][0], rtol=1e-6, atol=1e-6)


def test_inconsistent_and_multiframe_refused(tmp_path):
    _write(tmp_path / "pt")
    files = sorted((tmp_path / "pt").glob("*.dcm"))
    _mutate_one(files[1], lambda ds: setattr(ds, "PixelSpacing", ["3.0", "2.0"]))
    with pytest.raises(DicomError) as e:
        read_single_series(tmp_path / "pt")
    assert e.value.reason == "DICOM_INCONSISTENT_SLICES"
    _mutate_one(files[1], lambda ds: setattr(ds, "PixelSpacing", ["2.5", "2.0"]))
    _mutate_one(files[0], lambda ds: setattr(ds, "NumberOfFrames", 2))
    with pytest.raises(DicomError) as e:
        read_single_series(tmp_path / "pt")
    assert e.value.reason == "DICOM_MULTIFRAME_UNSUPPORTED"


@settings(max_examples=8, deadline=None)
@given(shape=st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 5)),
       spacing=st.tuples(*[st.floats(0.5, 6.0)] * 3),
       origin=st.tuples(*[st.floats(-400.0, 400.0)] * 3),
       seed=st.integers(0, 1000))
def test_write_read_property(shape, spacing, origin, seed):
    suv = np.random.default_rng(seed).gamma(1.5, 2.0, shape).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        written = write_pet_series(f"{tmp}/pt", suv, spacing=spacing, origin=origin, patient=PAT, scan=SCAN)
        vol = _suv_read(pathlib.Path(tmp) / "pt")
    np.testing.assert_array_equal(vol.array, written["suv"])
    # geometry through DS strings (16 characters): sub-micrometre agreement
    np.testing.assert_allclose(vol.origin, origin, atol=1e-6)
    if shape[0] > 1:
        np.testing.assert_allclose(vol.spacing, spacing, rtol=1e-6)


def test_archive_scan_keeps_only_seg_and_rtstruct_objects(tmp_path):
    """Mask objects are told by SOP class (one rule for scan and readers); a Surface Segmentation is not one."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from petcohort.storage.dicom_read import LABELMAP_SEG_SOP_CLASS, scan_dicom_archive

    for name, sop in (("labelmap", LABELMAP_SEG_SOP_CLASS), ("surface", "1.2.840.10008.5.1.4.1.1.66.5")):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[name])
        ds.Modality, ds.SeriesInstanceUID = "SEG", generate_uid(entropy_srcs=[name, "s"])
        ds.save_as(tmp_path / f"{name}.dcm", enforce_file_format=True)
    archive = scan_dicom_archive(tmp_path)
    assert [p.rsplit("/", 1)[1] for p, _ in archive.objects] == ["labelmap.dcm"]
    assert archive.series == [] and archive.unreadable == 0
