"""DICOM SEG + SR TID 1500 writers (storage/dicom_export.py): read back with highdicom, checked by dciodvfy.

Source PET headers are written by ``dicom_write.write_pet_series``; the
flipped case rewrites their orientation so that rows run right-to-left and
columns anterior (ingest then reverses both axes)."""
from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from petcohort.engine.errors import InputError
from petcohort.storage.dicom_export import (SUVBW_UNIT, ExportLesion, WriterInfo, build_measurement_report,
                                             build_segmentation, dciodvfy_errors, segment_label, source_frames,
                                             sul_concepts)
from petcohort.storage.dicom_read import slice_geometry
from petcohort.storage.dicom_write import write_pet_series

SHAPE = (5, 6, 7)
SPACING = (3.0, 4.0, 4.0)
ORIGIN = (-100.0, -50.0, -60.0)


@pytest.fixture(scope="module")
def pet_headers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pet")
    suv = np.random.default_rng(0).gamma(2.0, 1.0, SHAPE)
    write_pet_series(folder, suv, spacing=SPACING, origin=ORIGIN,
                     patient={"id": "EXPORT-TEST", "weight_kg": 70.0, "height_m": 1.7, "sex": "F"},
                     scan={"acquisition_datetime": dt.datetime(2024, 1, 1, 10), "dose_bq": 3e8,
                           "injection_datetime": dt.datetime(2024, 1, 1, 9), "half_life_s": 6586.2,
                           "frame_duration_s": 120.0})
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]


def _flipped(headers):
    """The same grid seen with rows running to patient right and columns anterior (IOP -1,0,0,0,-1,0)."""
    out = []
    for ds in headers:
        ds = copy.deepcopy(ds)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImageOrientationPatient = [-1, 0, 0, 0, -1, 0]
        ds.ImagePositionPatient = [x + (ds.Columns - 1) * SPACING[2], y + (ds.Rows - 1) * SPACING[1], z]
        out.append(ds)
    return out


def _labels():
    lab = np.zeros(SHAPE, np.int32)
    lab[1:3, 1:3, 1:4] = 1          # 12 voxels, asymmetric in y and x so a missed flip shows
    lab[2:4, 3:5, 4:6] = 2
    lab[4, 5, 6] = 3                # a corner voxel
    return lab


def _rows():
    return [{"lesion": 1, "voxels": 12, "suvmax": 6.25, "suvmean": 3.1234567, "suvpeak": 4.5, "sulpeak": 3.6,
             "mtv_ml": 0.576, "tlg": 1.7991110592},
            {"lesion": 2, "voxels": 8, "suvmax": 2.0, "suvmean": 1.5, "suvpeak": 1.25, "sulpeak": None,
             "sulpeak_reason": "SUL_UNAVAILABLE", "mtv_ml": 0.384, "tlg": 0.576},
            {"lesion": 3, "voxels": 1, "suvmax": 1.0, "suvmean": 1.0, "suvpeak": 0.5, "sulpeak": 0.4,
             "mtv_ml": 0.048, "tlg": 0.048}]


def _lesions(track=False):
    rows = _rows()
    out = [ExportLesion(1, segment_label(1, tracking_id="track 1" if track else None), rows[0],
                        tracking_id="track 1" if track else None, tracking_uid=hd.UID() if track else None),
           ExportLesion(2, segment_label(2, source_label="Node left axilla"), rows[1]),
           ExportLesion(3, segment_label(3), rows[2])]
    return out


def _no_errors(path):
    errors = dciodvfy_errors(path)
    if errors is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    assert errors == []


# ------------------------------------------------------------------------------------------- labels, frames
def test_segment_label_rules():
    assert segment_label(3) == "Lesion 3"
    assert segment_label(3, tracking_id="track 7") == "Lesion 3 track 7"
    assert segment_label(3, source_label=" Node B ") == "Node B"
    long = segment_label(1, source_label="x" * 80, tracking_id="track 12")
    assert len(long) == 64 and long.endswith(" track 12")


def test_source_frames_undoes_flips():
    a = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    assert np.array_equal(source_frames(a, (False, False)), a)
    assert np.array_equal(source_frames(a, (True, False)), a[:, ::-1, :])
    assert np.array_equal(source_frames(a, (True, True)), a[:, ::-1, ::-1])
    assert np.array_equal(source_frames(source_frames(a, (True, True)), (True, True)), a)


def test_sul_codes_follow_the_lbm_formula():
    assert sul_concepts(None)[0].value == "126405" and sul_concepts("janmahasatian")[1].value == "g/ml{SUVlbm(Janma)}"
    assert sul_concepts("james")[0].value == "126406"
    with pytest.raises(InputError) as err:
        sul_concepts("boer")
    assert err.value.reason == "BAD_VALUE"


# ------------------------------------------------------------------------------------------------------ SEG
@pytest.mark.parametrize("flipped", [False, True], ids=["rows-left-columns-posterior", "flipped"])
def test_seg_round_trip(tmp_path, pet_headers, flipped):
    headers = _flipped(pet_headers) if flipped else pet_headers
    flips = slice_geometry(headers)[3]
    assert flips == ((True, True) if flipped else (False, False))
    labels, lesions = _labels(), _lesions(track=True)
    seg = build_segmentation(headers, labels, lesions, flips=flips, info=WriterInfo("nnunet_bl", automatic=True))
    path = tmp_path / "seg.dcm"
    seg.save_as(path)
    _no_errors(path)
    back = hd.seg.segread(path)
    uids = [str(ds.SOPInstanceUID) for ds in headers]
    frames = back.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True,
                                                skip_overlap_checks=True)
    assert frames.shape == SHAPE
    assert np.array_equal(source_frames(frames, flips), labels)      # segment k = lesion k here
    for k, les in enumerate(lesions, start=1):                        # and per segment
        one = back.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[k])[..., 0]
        assert np.array_equal(source_frames(one, flips), labels == les.lesion)
    desc = back.get_segment_description(1)
    assert desc.segment_label == "Lesion 1 track 1" and desc.tracking_id == "track 1"
    assert desc.tracking_uid == lesions[0].tracking_uid
    assert back.get_segment_description(2).segment_label == "Node left axilla"
    assert desc.algorithm_type.value == "AUTOMATIC"
    assert desc.algorithm_identification[0].AlgorithmName == "petcohort nnunet_bl"
    assert desc.segmented_property_category == codes.SCT.MorphologicallyAbnormalStructure
    assert desc.segmented_property_type == codes.SCT.Lesion
    assert back.SegmentationType == "BINARY"
    assert back.ReferencedSeriesSequence[0].SeriesInstanceUID == headers[0].SeriesInstanceUID
    assert back.PatientID == headers[0].PatientID and back.StudyInstanceUID == headers[0].StudyInstanceUID


def test_manual_seg_and_refusals(pet_headers):
    labels = _labels()
    seg = build_segmentation(pet_headers, labels, _lesions(), flips=(False, False),
                             info=WriterInfo("manual", automatic=False))
    desc = seg.get_segment_description(3)
    assert desc.algorithm_type.value == "MANUAL" and "SegmentAlgorithmName" not in desc
    with pytest.raises(InputError) as err:
        build_segmentation(pet_headers, labels, [], flips=(False, False), info=WriterInfo("manual", False))
    assert err.value.reason == "EXPORT_NO_LESIONS"
    with pytest.raises(InputError) as err:
        build_segmentation(pet_headers, labels[:4], _lesions(), flips=(False, False), info=WriterInfo("manual", False))
    assert err.value.reason == "EXPORT_GEOMETRY_MISMATCH"
    with pytest.raises(InputError) as err:
        build_segmentation(pet_headers, np.where(labels == 3, 0, labels), _lesions(), flips=(False, False),
                           info=WriterInfo("manual", False))
    assert err.value.reason == "EXPORT_EMPTY_SEGMENT"


# ------------------------------------------------------------------------------------------------------- SR
def _measurements(group) -> dict[tuple[str, str | None], tuple[float, str]]:
    out = {}
    for m in group.get_measurements():
        key = (m.name.value, m.derivation.value if m.derivation is not None else None)
        assert key not in out
        out[key] = (m.value, m.unit.value)
    return out


def test_sr_round_trip(tmp_path, pet_headers):
    info = WriterInfo("nnunet_bl", automatic=True)
    lesions = _lesions(track=True)
    seg = build_segmentation(pet_headers, _labels(), lesions, flips=(False, False), info=info)
    study = {"mtv_ml": 1.008, "tlg": 2.4231110592, "suvmax": 6.25, "sulpeak": 3.6}
    sr = build_measurement_report(pet_headers, lesions, segmentation=seg, study_values=study, info=info,
                                  timepoint=1)
    path = tmp_path / "sr.dcm"
    sr.save_as(path)
    _no_errors(path)
    back = hd.sr.srread(path)
    assert back.SeriesNumber == info.series_number + 1 and back.PatientID == pet_headers[0].PatientID
    groups = back.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == 3
    for k, (group, les) in enumerate(zip(groups, lesions), start=1):
        ref = group.referenced_segment
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID and ref.referenced_segment_numbers == [k]
        assert ref.source_series_for_segmentation.UID == pet_headers[0].SeriesInstanceUID
        assert group.tracking_identifier == les.label
        if les.tracking_uid:
            assert group.tracking_uid == les.tracking_uid
        got = _measurements(group)
        v = les.values
        expected = {("126401", "56851009"): (v["suvmax"], "g/ml{SUVbw}"),
                    ("126401", "373098007"): (v["suvmean"], "g/ml{SUVbw}"),
                    ("126401", "126031"): (v["suvpeak"], "g/ml{SUVbw}"),
                    ("118565006", None): (v["mtv_ml"], "ml"), ("126032", None): (v["mtv_ml"], "ml"),
                    ("126033", None): (v["tlg"], "g")}
        if v["sulpeak"] is not None:
            expected[("126405", "126031")] = (v["sulpeak"], "g/ml{SUVlbm(Janma)}")
        assert got == expected                   # exact: the SR carries FloatingPointValue (FD)
    whole = back.content.get_image_measurement_groups()
    assert len(whole) == 1 and whole[0].tracking_identifier == "Whole-body lesion burden"
    assert _measurements(whole[0]) == {("126401", "56851009"): (6.25, SUVBW_UNIT.value),
                                       ("126405", "126031"): (3.6, "g/ml{SUVlbm(Janma)}"),
                                       ("126032", None): (1.008, "ml"), ("126033", None): (2.4231110592, "g")}


def test_sr_without_lesions(tmp_path, pet_headers):
    info = WriterInfo("threshold_suv25", automatic=True)
    sr = build_measurement_report(pet_headers, [], segmentation=None, study_values={"mtv_ml": 0.0, "tlg": 0.0},
                                  info=info, timepoint=0, with_ct=False)
    path = tmp_path / "sr0.dcm"
    sr.save_as(path)
    _no_errors(path)
    back = hd.sr.srread(path)
    assert back.content.get_volumetric_roi_measurement_groups() == []
    (whole,) = back.content.get_image_measurement_groups()
    assert _measurements(whole) == {("126032", None): (0.0, "ml"), ("126033", None): (0.0, "g")}
    with pytest.raises(InputError) as err:
        build_measurement_report(pet_headers, _lesions(), segmentation=None, study_values={}, info=info)
    assert err.value.reason == "EXPORT_BAD_LESIONS"


# ------------------------------------------------------------------------------------------- real headers
SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dicom-samples"


@pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent the intended person name")
def test_real_vendor_headers(tmp_path):
    """A clinical CT series (TCIA LUNG1-001) as source images: vendor headers go through highdicom and dciodvfy.

    (There is no PET among the samples; the writer only needs image-plane headers.)"""
    folder = SAMPLES / "nsclc_lung1_001_ct_rtstruct" / "image"
    if not folder.is_dir():
        pytest.skip(f"real DICOM samples not found at {SAMPLES} (only the project checkout has them)")
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.rglob("*")) if p.is_file()]
    order, _, _, flips = slice_geometry(headers)
    headers = [headers[i] for i in order]
    labels = np.zeros((len(headers), int(headers[0].Rows), int(headers[0].Columns)), np.int32)
    labels[60:64, 200:230, 300:320] = 1
    labels[70:71, 250:260, 100:140] = 2
    lesions = _lesions()[:2]
    info = WriterInfo("manual", automatic=False)
    seg = build_segmentation(headers, labels, lesions, flips=flips, info=info)
    sr = build_measurement_report(headers, lesions, segmentation=seg, study_values={"mtv_ml": 1.0, "tlg": 2.0},
                                  info=info, timepoint=0)
    for name, obj in (("seg.dcm", seg), ("sr.dcm", sr)):
        obj.save_as(tmp_path / name)
        _no_errors(tmp_path / name)
    back = hd.seg.segread(tmp_path / "seg.dcm")
    frames = back.get_pixels_by_source_instance(source_sop_instance_uids=[str(h.SOPInstanceUID) for h in headers],
                                                combine_segments=True, skip_overlap_checks=True)
    assert np.array_equal(source_frames(frames, flips), labels)
    assert back.PatientID == headers[0].PatientID and back.FrameOfReferenceUID == headers[0].FrameOfReferenceUID
