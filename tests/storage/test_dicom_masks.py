"""DICOM SEG and RTSTRUCT objects rasterised onto the PET grid (storage/dicom_masks.py)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_fixtures import lps_contour, write_pet_series, write_rtstruct, write_seg
from pydicom.dataset import Dataset

from petcohort.engine.errors import DicomError, InputError
from petcohort.storage.dicom_masks import (MaskObject, PetGrid, SegmentInfo, is_mask_object, match_mask,
                                           rasterise_mask, read_mask_header)
from petcohort.storage.dicom_read import read_single_series
from petcohort.storage.dicom_roles import _role_from_text

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dicom-samples"
SHAPE, SPACING, ORIGIN = (6, 10, 12), (4.0, 3.0, 2.5), (-100.0, -50.0, -60.0)


def _header(path) -> MaskObject:
    return read_mask_header(str(path), pydicom.dcmread(path, stop_before_pixels=True))


def _sample(name: str) -> Path:
    folder = SAMPLES / name
    if not folder.is_dir():
        pytest.skip(f"real DICOM samples absent ({folder.name} not found beside the repository)")
    return folder


def _headers(folder: Path) -> list[Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]


# -- real samples ------------------------------------------------------------------------------------------
def _shoelace_ml(contours, thickness_mm: float) -> float:
    total = 0.0
    for c in contours:
        p = np.asarray(c.ContourData, dtype=np.float64).reshape(-1, 3)
        total += abs(0.5 * np.sum(p[:, 0] * np.roll(p[:, 1], -1) - np.roll(p[:, 0], -1) * p[:, 1]))
    return total * thickness_mm / 1000.0


def test_nsclc_rtstruct_on_its_ct_grid():
    """GTV-1 (RTROIInterpretedType ORGAN, named GTV) is the lesion; its volume = polygon areas x thickness."""
    folder = _sample("nsclc_lung1_001_ct_rtstruct")
    ct = _headers(folder / "image")
    grid = PetGrid.from_headers(ct)                     # the grid code is modality-agnostic
    assert grid.shape == (134, 512, 512) and grid.spacing == pytest.approx((3.0, 0.9765625, 0.9765625))
    path = next((folder / "mask_rtstruct").glob("*.dcm"))
    obj = _header(path)
    assert obj.kind == "RTSTRUCT" and not obj.fractional
    assert match_mask(obj, pet_series_uid=str(ct[0].SeriesInstanceUID),
                      pet_frame_uid=str(ct[0].FrameOfReferenceUID)) == "referenced_series"
    mask = rasterise_mask(obj, grid)
    assert [s.label for s in mask.lesion_segments] == ["GTV-1"]
    assert {s.label for s in mask.ignored} == {"Spinal-Cord", "Lung-Left", "Lung-Right"}
    assert mask.organs == {} and mask.warnings == ()
    assert mask.lesions.dtype == np.uint16 and set(np.unique(mask.lesions)) == {0, 1}
    voxel_ml = float(np.prod(grid.spacing)) / 1000.0
    ml = int((mask.lesions == 1).sum()) * voxel_ml
    rt = pydicom.dcmread(path)
    contours = {int(r.ReferencedROINumber): r.ContourSequence for r in rt.ROIContourSequence}
    reference = _shoelace_ml(contours[2], 3.0)         # 156.35 mL: one contour per plane, no holes
    assert 150.0 < ml < 163.0
    assert ml == pytest.approx(reference, rel=0.01)
    # the lungs have several polygons per plane (islands); selected by label they match their areas as well
    lungs = rasterise_mask(obj, grid, label_regex="^lung")
    assert [s.label for s in lungs.lesion_segments] == ["Lung-Left", "Lung-Right"]
    for k, roi in ((1, 7), (2, 8)):
        assert int((lungs.lesions == k).sum()) * voxel_ml == pytest.approx(_shoelace_ml(contours[roi], 3.0),
                                                                             rel=0.01)


def test_seg_bitpacking_phantom_equals_independent_decode():
    """23 x 38 one-bit frames packed back to back (not byte-aligned): decoded here with numpy.unpackbits."""
    folder = _sample("seg_bitpacking_phantom")
    images = _headers(folder / "image")
    grid = PetGrid.from_headers(images)
    path = folder / "mask" / "mask.dcm"
    obj = _header(path)
    assert obj.kind == "SEG" and [(s.label, s.role) for s in obj.segments] == [("Liver", "liver")]
    ds = pydicom.dcmread(path)
    n, rows, cols = int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns)
    # PS3.5 8.1.1: 1-bit pixels, least significant bit first, frames contiguous in the bit stream
    bits = np.unpackbits(np.frombuffer(ds.PixelData, np.uint8), bitorder="little")[: n * rows * cols]
    frames = bits.reshape(n, rows, cols)
    z = [float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in ds.PerFrameFunctionalGroupsSequence]
    expected = frames[np.argsort(z)]
    # the sample does exercise the bug: decoding each frame from its own byte boundary differs
    per_frame_bytes = -(-rows * cols // 8)            # 110 bytes, but frame 2 starts at bit 874 = byte 109.25
    raw = np.frombuffer(ds.PixelData, np.uint8)[per_frame_bytes:2 * per_frame_bytes]
    naive = np.unpackbits(raw, bitorder="little")[: rows * cols].reshape(rows, cols)
    assert not np.array_equal(naive, frames[1])
    organs = rasterise_mask(obj, grid, lesions=False)
    np.testing.assert_array_equal(organs.organs["liver"], expected)
    as_lesion = rasterise_mask(obj, grid, label_regex="liver")
    np.testing.assert_array_equal(as_lesion.lesions, expected.astype(np.uint16))
    assert as_lesion.organs == {}


# -- synthetic study ---------------------------------------------------------------------------------------
def _truth():
    """Three lesions (the third in two parts), a liver, and the painted label map."""
    a = np.zeros(SHAPE, np.uint8)
    a[1:3, 2:5, 3:6] = 1
    b = np.zeros(SHAPE, np.uint8)
    b[3, 6:8, 1:3] = 1
    b[4, 0:2, 9:11] = 1               # a second, disconnected part of the same segment
    c = np.zeros(SHAPE, np.uint8)
    c[5, 7:9, 7:10] = 1
    liver = np.zeros(SHAPE, np.uint8)
    liver[:, 5:9, 3:7] = 1
    liver[3, 6:8, 1:3] = 0
    liver[5, 7:9, 7:10] = 0
    return [a, b, c], liver


@pytest.fixture(params=[False, True], ids=["rows-down", "rows-flipped"])
def study(request, tmp_path):
    suv = np.random.default_rng(7).gamma(2.0, 1.0, SHAPE)
    pet = write_pet_series(tmp_path / "pt", suv, SPACING, ORIGIN, flip_rows=request.param)
    return tmp_path, pet


def test_fixture_pet_series_reads_back(study):
    tmp_path, pet = study
    info, volume = read_single_series(tmp_path / "pt")
    assert volume.array.shape == SHAPE and volume.origin == pytest.approx(ORIGIN)
    grid = PetGrid.from_headers(pet[::-1])                         # any order
    assert grid.shape == SHAPE and grid.spacing == pytest.approx(SPACING) and grid.origin == pytest.approx(ORIGIN)
    assert grid.sop_uids == tuple(str(ds.SOPInstanceUID) for ds in pet)


@pytest.mark.parametrize("use_sources", [True, False], ids=["by-source-instance", "by-position"])
def test_seg_lesions_and_liver_equal_painted_truth(study, use_sources):
    tmp_path, pet = study
    lesions, liver = _truth()
    write_seg(tmp_path / "seg.dcm", pet, lesions, ["Lesion 1", "Lesion 2", "Lesion 3"], {"liver": liver})
    obj = _header(tmp_path / "seg.dcm")
    assert [(s.number, s.role, s.code) for s in obj.segments] == [
        (1, "lesion", "SCT:108369006"), (2, "lesion", "SCT:108369006"), (3, "lesion", "SCT:108369006"),
        (4, "liver", "SCT:10200004")]
    grid = PetGrid.from_headers(pet)
    if not use_sources:
        grid = dataclasses.replace(grid, sop_uids=())
    mask = rasterise_mask(obj, grid)
    expected = sum((k + 1) * m.astype(np.uint16) for k, m in enumerate(lesions))
    np.testing.assert_array_equal(mask.lesions, expected)
    np.testing.assert_array_equal(mask.organs["liver"], liver)
    assert mask.organs["liver"].dtype == np.uint8 and set(mask.organs) == {"liver"}
    assert [s.label for s in mask.lesion_segments] == ["Lesion 1", "Lesion 2", "Lesion 3"]
    assert mask.warnings == () and mask.ignored == ()


def test_seg_fractional_threshold_half(study):
    tmp_path, pet = study
    frac = np.zeros(SHAPE, np.float32)
    frac[2, 3:6, 3:7] = 0.4
    frac[2, 4:6, 4:6] = 0.6
    frac[3, 4, 4] = 1.0
    write_seg(tmp_path / "frac.dcm", pet, [frac], ["tumour"], fractional=True)
    obj = _header(tmp_path / "frac.dcm")
    assert obj.fractional
    mask = rasterise_mask(obj, PetGrid.from_headers(pet))
    np.testing.assert_array_equal(mask.lesions, (frac >= 0.5).astype(np.uint16))


def test_seg_labelmap(study):
    tmp_path, pet = study
    lesions, liver = _truth()
    write_seg(tmp_path / "labelmap.dcm", pet, lesions, ["L1", "L2", "L3"], {"liver": liver}, labelmap=True)
    mask = rasterise_mask(_header(tmp_path / "labelmap.dcm"), PetGrid.from_headers(pet))
    np.testing.assert_array_equal(mask.lesions, sum((k + 1) * m.astype(np.uint16) for k, m in enumerate(lesions)))
    np.testing.assert_array_equal(mask.organs["liver"], liver)


def test_seg_label_regex_selects_lesions_and_keeps_organs(study):
    tmp_path, pet = study
    lesions, liver = _truth()
    write_seg(tmp_path / "seg.dcm", pet, lesions, ["Lesion 1", "Node 2", "Lesion 3"], {"liver": liver})
    mask = rasterise_mask(_header(tmp_path / "seg.dcm"), PetGrid.from_headers(pet), label_regex="^lesion")
    assert [s.number for s in mask.lesion_segments] == [1, 3]
    np.testing.assert_array_equal(mask.lesions, lesions[0] + 2 * lesions[2].astype(np.uint16))
    np.testing.assert_array_equal(mask.organs["liver"], liver)
    assert [s.number for s in mask.ignored] == [2]


def test_matching_by_series_then_frame_of_reference(study):
    tmp_path, pet = study
    lesions, _ = _truth()
    seg = write_seg(tmp_path / "seg.dcm", pet, lesions[:1], ["Lesion"])
    series, frame = str(pet[0].SeriesInstanceUID), str(pet[0].FrameOfReferenceUID)
    obj = _header(tmp_path / "seg.dcm")
    assert match_mask(obj, pet_series_uid=series, pet_frame_uid=frame) == "referenced_series"
    assert match_mask(obj, pet_series_uid=series, pet_frame_uid=None) == "referenced_series"
    assert match_mask(obj, pet_series_uid="1.2.3", pet_frame_uid=frame) == "frame_of_reference"
    assert match_mask(obj, pet_series_uid="1.2.3", pet_frame_uid="1.2.4") is None
    assert match_mask(obj, pet_series_uid="1.2.3", pet_frame_uid=None) is None
    # an RTSTRUCT whose referenced series is absent but whose frame of reference matches is rasterised
    square = np.array([[2.5, 2.5], [2.5, 5.5], [5.5, 5.5], [5.5, 2.5]])
    rt = write_rtstruct(tmp_path / "rt.dcm", pet, [("GTV", "GTV", [lps_contour(square, 2, SPACING, ORIGIN)])])
    item = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    item.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    rt.save_as(tmp_path / "rt.dcm", enforce_file_format=True)
    obj = _header(tmp_path / "rt.dcm")
    assert match_mask(obj, pet_series_uid=series, pet_frame_uid=frame) == "frame_of_reference"
    mask = rasterise_mask(obj, PetGrid.from_headers(pet))
    expected = np.zeros(SHAPE, np.uint16)
    expected[2, 3:6, 3:6] = 1
    np.testing.assert_array_equal(mask.lesions, expected)
    assert seg.SeriesInstanceUID not in obj.referenced_series_uids


def _rt(tmp_path, pet, rois, name="rt.dcm") -> MaskObject:
    """ROIs of (name, type, contours); a contour is (slice index, (N, 2) row/col box) or (geometric type, LPS)."""
    write_rtstruct(tmp_path / name, pet, [(n, t, [c if isinstance(c[0], str) else lps_contour(c[1], c[0], SPACING,
                                                                                              ORIGIN)
                                                  for c in contours]) for n, t, contours in rois])
    return _header(tmp_path / name)


def _box(r0, r1, c0, c1):
    return np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], dtype=np.float64)


def test_rtstruct_contours_equal_painted_truth(study):
    """Contours on pixel centres (half-open rule), a nested hole, an organ, ignored ROIs and a POINT."""
    tmp_path, pet = study
    point = ("POINT", lps_contour(np.array([[4.0, 4.0]]), 1, SPACING, ORIGIN))
    obj = _rt(tmp_path, pet, [
        ("GTV_1", "GTV", [(1, _box(2, 5, 3, 6)), (2, _box(2, 5, 3, 6))]),             # centres 2..5 -> rows 2..4
        ("Nodule", "ORGAN", [(3, _box(0.5, 7.5, 0.5, 7.5)), (3, _box(2.5, 4.5, 2.5, 4.5))]),   # ring
        ("Liver", "ORGAN", [(z, _box(7.5, 9.5, 6.5, 11.5)) for z in range(SHAPE[0])]),
        ("PTV_1", "PTV", [(1, _box(0.5, 9.5, 0.5, 11.5))]),
        ("Marker", "MARKER", [point]),
    ])
    assert [(s.label, s.role) for s in obj.segments] == [("GTV_1", "lesion"), ("Nodule", "lesion"),
                                                         ("Liver", "liver"), ("PTV_1", "other"), ("Marker", "other")]
    mask = rasterise_mask(obj, PetGrid.from_headers(pet))
    expected = np.zeros(SHAPE, np.uint16)
    expected[1:3, 2:5, 3:6] = 1
    expected[3, 1:8, 1:8] = 2
    expected[3, 3:5, 3:5] = 0
    np.testing.assert_array_equal(mask.lesions, expected)
    liver = np.zeros(SHAPE, np.uint8)
    liver[:, 8:10, 7:12] = 1
    np.testing.assert_array_equal(mask.organs["liver"], liver)
    assert [s.label for s in mask.ignored] == ["PTV_1", "Marker"]
    assert mask.warnings == ()        # the POINT belongs to an ignored ROI: never read


def test_totalsegmentator_names_become_organs(study):
    """TotalSegmentator class names (engine/kernels/organs.py) give bone/liver/aorta; the rest is ignored."""
    tmp_path, pet = study
    obj = _rt(tmp_path, pet, [("lesion_1", "", [(0, _box(0.5, 1.5, 0.5, 1.5))]),
                              ("vertebrae_L1", "", [(1, _box(1.5, 3.5, 1.5, 3.5))]),
                              ("rib_left_3", "ORGAN", [(2, _box(1.5, 3.5, 1.5, 3.5))]),
                              ("liver", "ORGAN", [(3, _box(1.5, 3.5, 1.5, 3.5))]),
                              ("aorta", "", [(4, _box(1.5, 3.5, 1.5, 3.5))]),
                              ("kidney_left", "ORGAN", [(5, _box(1.5, 3.5, 1.5, 3.5))])])
    mask = rasterise_mask(obj, PetGrid.from_headers(pet))
    assert set(mask.organs) == {"bone", "liver", "aorta"}
    assert [int(mask.organs["bone"][z].sum()) for z in range(SHAPE[0])] == [0, 4, 4, 0, 0, 0]
    assert int(mask.organs["liver"][3].sum()) == 4 and int(mask.organs["aorta"][4].sum()) == 4
    assert [s.label for s in mask.ignored] == ["kidney_left"] and int(mask.lesions.sum()) == 1


def test_rtstruct_point_and_open_contours_counted(study):
    tmp_path, pet = study
    line = ("OPEN_PLANAR", lps_contour(np.array([[1.0, 1.0], [3.0, 3.0], [1.0, 5.0]]), 1, SPACING, ORIGIN))
    point = ("POINT", lps_contour(np.array([[4.0, 4.0]]), 1, SPACING, ORIGIN))
    obj = _rt(tmp_path, pet, [("GTV", "GTV", [(1, _box(1.5, 3.5, 1.5, 3.5)), line, point])])
    mask = rasterise_mask(obj, PetGrid.from_headers(pet))
    assert int(mask.lesions.sum()) == 4
    assert [r for r, _ in mask.warnings] == ["MASK_CONTOURS_IGNORED"]
    assert "1 OPEN_PLANAR" in mask.warnings[0][1] and "1 POINT" in mask.warnings[0][1]


def test_rtstruct_finer_planes_use_the_nearest_plane(tmp_path):
    """Contours every 2 mm on a 4 mm PET: each slice takes the plane nearest its centre, never an XOR."""
    pet = write_pet_series(tmp_path / "pt", np.ones(SHAPE), SPACING, ORIGIN)
    contours = [(z / 2, _box(1.5, 3.5 + (z % 2) * 2, 1.5, 3.5)) for z in range(2 * SHAPE[0] - 1)]
    mask = rasterise_mask(_rt(tmp_path, pet, [("GTV", "GTV", contours)]), PetGrid.from_headers(pet))
    expected = np.zeros(SHAPE, np.uint16)
    expected[:, 2:4, 2:4] = 1          # the even planes sit on the slice centres; odd planes are farther
    np.testing.assert_array_equal(mask.lesions, expected)


# -- errors and warnings -----------------------------------------------------------------------------------
def test_no_lesion_segment_lists_labels(study):
    tmp_path, pet = study
    _, liver = _truth()
    write_seg(tmp_path / "organs.dcm", pet, [], [], {"liver": liver})
    obj = _header(tmp_path / "organs.dcm")
    grid = PetGrid.from_headers(pet)
    with pytest.raises(DicomError, match="liver") as err:
        rasterise_mask(obj, grid)
    assert err.value.reason == "MASK_NO_LESION_SEGMENT" and "--mask-label" in err.value.message
    with pytest.raises(DicomError) as err:
        rasterise_mask(obj, grid, label_regex="tumou?r")
    assert err.value.reason == "MASK_NO_LESION_SEGMENT"
    organs_only = rasterise_mask(obj, grid, lesions=False)
    assert not organs_only.lesions.any() and organs_only.lesion_segments == ()
    np.testing.assert_array_equal(organs_only.organs["liver"], liver)
    with pytest.raises(InputError) as err:
        rasterise_mask(obj, grid, label_regex="(")
    assert err.value.reason == "BAD_REGEX"


def test_overlapping_lesions_refused(study):
    tmp_path, pet = study
    lesions, _ = _truth()
    overlap = lesions[0].copy()
    overlap[2, 4, 5] = 1
    overlap[1] = 0
    _, liver = _truth()
    write_seg(tmp_path / "overlap.dcm", pet, [lesions[0], overlap], ["Reader A", "Reader B"], {"liver": liver})
    obj = _header(tmp_path / "overlap.dcm")
    with pytest.raises(DicomError, match="Reader A") as err:
        rasterise_mask(obj, PetGrid.from_headers(pet))
    assert err.value.reason == "MASK_OVERLAPPING_LESIONS" and "Reader B" in err.value.message
    # organs only (the object is not the lesion source): its lesion segments are not read at all
    organs = rasterise_mask(obj, PetGrid.from_headers(pet), lesions=False)
    assert not organs.lesions.any() and [s.label for s in organs.ignored] == ["Reader A", "Reader B"]
    np.testing.assert_array_equal(organs.organs["liver"], liver)


def test_empty_segment_dropped_and_all_empty_refused(study):
    tmp_path, pet = study
    lesions, _ = _truth()
    empty = np.zeros(SHAPE, np.uint8)
    write_seg(tmp_path / "seg.dcm", pet, [lesions[0], empty, lesions[2]], ["A", "B (empty)", "C"])
    mask = rasterise_mask(_header(tmp_path / "seg.dcm"), PetGrid.from_headers(pet))
    assert [s.label for s in mask.lesion_segments] == ["A", "C"]
    np.testing.assert_array_equal(mask.lesions, lesions[0] + 2 * lesions[2].astype(np.uint16))
    assert [r for r, _ in mask.warnings] == ["MASK_EMPTY_SEGMENT"] and "B (empty)" in mask.warnings[0][1]
    # an RTSTRUCT lesion whose only contour encloses no pixel centre
    obj = _rt(tmp_path, pet, [("GTV", "GTV", [(2, _box(2.2, 2.8, 2.2, 2.8))])])
    with pytest.raises(DicomError) as err:
        rasterise_mask(obj, PetGrid.from_headers(pet))
    assert err.value.reason == "MASK_EMPTY"


def _nearest_reference(seg_mask, seg_spacing, seg_origin) -> np.ndarray:
    """Brute force: each PET voxel centre takes the SEG voxel whose centre is nearest (per axis), or 0 outside."""
    out = np.zeros(SHAPE, np.uint8)
    for z in range(SHAPE[0]):
        for y in range(SHAPE[1]):
            for x in range(SHAPE[2]):
                centre = (ORIGIN[0] + z * SPACING[0], ORIGIN[1] + y * SPACING[1], ORIGIN[2] + x * SPACING[2])
                idx = [round((c - o) / s) for c, o, s in zip(centre, seg_origin, seg_spacing)]
                if all(0 <= i < n for i, n in zip(idx, seg_mask.shape)):
                    out[z, y, x] = seg_mask[tuple(idx)]
    return out


def test_seg_on_another_grid_resampled(study, tmp_path):
    """Frames on another grid of the same frame of reference: nearest SEG voxel at each PET centre, recorded."""
    _, pet = study
    frame = str(pet[0].FrameOfReferenceUID)
    grid = PetGrid.from_headers(pet)
    rng = np.random.default_rng(3)
    cases = [("fine", (6, 20, 30), (4.0, 1.5, 1.1), ORIGIN),   # finer in-plane; 2.5/1.1 = 25/11: no centre ties
             ("shift", SHAPE, SPACING, (ORIGIN[0], ORIGIN[1] + 1.4, ORIGIN[2] - 0.8)),     # shifted
             ("thin", (12, *SHAPE[1:]), (2.0, *SPACING[1:]), ORIGIN)]                      # finer slices
    for name, shape, spacing, origin in cases:
        other = write_pet_series(tmp_path / name, np.ones(shape), spacing, origin, frame_uid=frame,
                                 series_description=name)
        mask = np.zeros(shape, np.uint8)
        mask[1:-1, 2:-2, 2:-2] = rng.random((shape[0] - 2, shape[1] - 4, shape[2] - 4)) < 0.6
        write_seg(tmp_path / f"{name}.dcm", other, [mask], ["Lesion"])
        obj = _header(tmp_path / f"{name}.dcm")
        assert match_mask(obj, pet_series_uid=str(pet[0].SeriesInstanceUID),
                          pet_frame_uid=frame) == "frame_of_reference"
        out = rasterise_mask(obj, grid)
        assert [w[0] for w in out.warnings] == ["MASK_RESAMPLED"], name
        np.testing.assert_array_equal(out.lesions, _nearest_reference(mask, spacing, origin), err_msg=name)


def test_oblique_seg_and_contours_refused(study):
    tmp_path, pet = study
    lesions, _ = _truth()
    seg = write_seg(tmp_path / "seg.dcm", pet, lesions[:1], ["Lesion"])
    c, s = np.cos(0.2), np.sin(0.2)
    seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient = \
        [f"{c:.6f}", f"{s:.6f}", "0", f"{-s:.6f}", f"{c:.6f}", "0"]
    seg.save_as(tmp_path / "seg.dcm")
    with pytest.raises(DicomError) as err:
        rasterise_mask(_header(tmp_path / "seg.dcm"), PetGrid.from_headers(pet))
    assert err.value.reason == "MASK_OBLIQUE"
    tilted = lps_contour(_box(1.5, 4.5, 1.5, 4.5), 2, SPACING, ORIGIN)
    tilted[:, 2] += np.array([0.0, 0.0, 1.0, 1.0])
    obj = _rt(tmp_path, pet, [("GTV", "GTV", [("CLOSED_PLANAR", tilted)])])
    with pytest.raises(DicomError) as err:
        rasterise_mask(obj, PetGrid.from_headers(pet))
    assert err.value.reason == "MASK_OBLIQUE"


def test_contours_off_grid(study):
    tmp_path, pet = study
    above = SHAPE[0] + 1                    # a plane a whole slice beyond the last PET slice
    obj = _rt(tmp_path, pet, [("GTV", "GTV", [(above, _box(1.5, 4.5, 1.5, 4.5))]),
                              ("Liver", "ORGAN", [(above, _box(1.5, 4.5, 1.5, 4.5))])])
    with pytest.raises(DicomError) as err:
        rasterise_mask(obj, PetGrid.from_headers(pet))
    assert err.value.reason == "MASK_CONTOURS_OFF_GRID" and "GTV" in err.value.message
    obj = _rt(tmp_path, pet, [("GTV", "GTV", [(1, _box(1.5, 4.5, 1.5, 4.5)), (-2, _box(1.5, 4.5, 1.5, 4.5))]),
                              ("Liver", "ORGAN", [(above, _box(1.5, 4.5, 1.5, 4.5))])], name="rt2.dcm")
    mask = rasterise_mask(obj, PetGrid.from_headers(pet))
    assert int(mask.lesions.sum()) == 9 and mask.organs == {}
    assert sorted(r for r, _ in mask.warnings) == ["MASK_CONTOURS_OFF_GRID", "MASK_CONTOURS_PARTLY_OFF_GRID"]
    # within half a slice of the last slice still counts as on it
    obj = _rt(tmp_path, pet, [("GTV", "GTV", [(SHAPE[0] - 0.5, _box(1.5, 4.5, 1.5, 4.5))])], name="rt3.dcm")
    assert int((rasterise_mask(obj, PetGrid.from_headers(pet)).lesions[-1]).sum()) == 9


def test_malformed_objects(study):
    tmp_path, pet = study
    lesions, _ = _truth()
    write_seg(tmp_path / "seg.dcm", pet, lesions[:1], ["Lesion"])
    ds = pydicom.dcmread(tmp_path / "seg.dcm", stop_before_pixels=True)
    for keyword in ("StudyInstanceUID", "SegmentSequence", "SegmentationType"):
        broken = ds.copy()
        delattr(broken, keyword)
        with pytest.raises(DicomError) as err:
            read_mask_header("x.dcm", broken)
        assert err.value.reason == "MASK_MALFORMED"
    rt = write_rtstruct(tmp_path / "rt.dcm", pet, [("GTV", "GTV", [])])
    del rt.StructureSetROISequence
    with pytest.raises(DicomError) as err:
        read_mask_header("rt.dcm", rt)
    assert err.value.reason == "MASK_MALFORMED"
    # a truncated file: the header reads, the pixels do not
    obj = _header(tmp_path / "seg.dcm")
    data = (tmp_path / "seg.dcm").read_bytes()
    (tmp_path / "seg.dcm").write_bytes(data[: len(data) - 40])
    with pytest.raises(DicomError) as err:
        rasterise_mask(obj, PetGrid.from_headers(pet))
    assert err.value.reason == "MASK_MALFORMED"
    assert str(tmp_path) not in err.value.message


def test_messages_carry_no_uids(study):
    tmp_path, pet = study
    lesions, _ = _truth()
    write_seg(tmp_path / "overlap.dcm", pet, [lesions[0], lesions[0]], ["A", "B"])
    with pytest.raises(DicomError) as err:
        rasterise_mask(_header(tmp_path / "overlap.dcm"), PetGrid.from_headers(pet))
    uids = {str(pet[0].StudyInstanceUID), str(pet[0].SeriesInstanceUID), str(pet[0].FrameOfReferenceUID)}
    assert not any(u in str(err.value) for u in uids) and str(tmp_path) not in str(err.value)


# -- roles and detection -----------------------------------------------------------------------------------
@pytest.mark.parametrize("label, role", [
    ("liver", "liver"), ("Liver", "liver"), ("vertebrae_L1", "bone"), ("rib_left_3", "bone"),
    ("femur_left", "bone"), ("hip_right", "bone"), ("sacrum", "bone"), ("skull", "bone"), ("sternum", "bone"),
    ("Skeleton", "bone"), ("aorta", "aorta"), ("Descending aorta", "aorta"), ("Thoracic aorta", "aorta"),
    ("GTV-1", "lesion"), ("Liver metastasis", "lesion"), ("Bone lesion 2", "lesion"), ("Tumour", "lesion"),
    ("lymph node 4", "lesion"), ("Mass", "lesion"), ("kidney_left", None), ("heart", None),
    ("Spinal-Cord", None), ("Vertebral artery", None), ("Lung-Left", None), ("", None),
])
def test_roles_from_labels(label, role):
    got = _role_from_text(label)
    assert (got if got != "other" else None) == role


def test_is_mask_object():
    def ds(**kw):
        d = Dataset()
        for k, v in kw.items():
            setattr(d, k, v)
        return d
    assert is_mask_object(ds(SOPClassUID="1.2.840.10008.5.1.4.1.1.66.4", Modality="SEG"))
    assert is_mask_object(ds(SOPClassUID="1.2.840.10008.5.1.4.1.1.481.3", Modality="RTSTRUCT"))
    assert is_mask_object(ds(Modality="RTSTRUCT"))
    assert not is_mask_object(ds(SOPClassUID="1.2.840.10008.5.1.4.1.1.66.5", Modality="SEG"))   # surface SEG
    assert not is_mask_object(ds(SOPClassUID="1.2.840.10008.5.1.4.1.1.128", Modality="PT"))


def test_segment_info_is_frozen():
    info = SegmentInfo(number=1, label="x", role="lesion", code=None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.number = 2


def test_retired_srt_codes_have_the_same_roles():
    """Older SEGs code segments with SNOMED RT (SRT) designators; they map through the standard's SRT->SCT table."""
    from petcohort.storage.dicom_roles import _role_from_code

    assert _role_from_code("SRT:T-62000", "") == "liver"
    assert _role_from_code("SRT:T-D016E", "") == "bone"
    assert _role_from_code("SRT:T-42000", "") == "aorta"
    assert _role_from_code("SRT:M-80006", "") == "lesion"        # Neoplasm, metastatic
    assert _role_from_code("SRT:T-28000", "Lung") is None         # no role: not guessed
