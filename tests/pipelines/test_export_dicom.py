"""export-dicom end to end: a DICOM archive is ingested, masks painted (or ingested from a DICOM SEG),
quantify (and track) run, and the export read back with highdicom equals the store's masks and the
lesions table; skipped studies carry their reason and the others still export."""
from __future__ import annotations

import datetime as dt
import json
import shutil

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from petcohort.pipelines.config import RunConfig
from petcohort.pipelines.export_dicom import REPORT_NAME, export_dicom
from petcohort.pipelines.ingest import ingest_tree
from petcohort.pipelines.stage_quantify import quantify_stage
from petcohort.pipelines.stage_track import track_stage
from petcohort.pipelines.stages import StageContext
from petcohort.pipelines.tables import lesions_frame
from petcohort.pipelines.tables_gather import gather
from petcohort.storage.dicom_export import dciodvfy_errors, source_frames
from petcohort.storage.dicom_read import slice_geometry
from petcohort.storage.dicom_write import write_ct_series, write_pet_series
from petcohort.storage.store import CohortStore

SHAPE = (6, 10, 12)
SPACING = (3.0, 4.0, 4.0)
ORIGIN = (-200.0, -20.0, -24.0)
T0 = dt.datetime(2024, 2, 1, 10, 0)


def _write_study(folder, pid, when, *, seed, ct=False, flip=False):
    """A PET (and CT) series of one study; ``flip`` rewrites IOP to (-1,0,0,0,-1,0) (ingest reverses Y and X)."""
    rng = np.random.default_rng(seed)
    suv = rng.gamma(2.0, 0.6, SHAPE)
    suv[1:3, 2:5, 3:6] += 5.0
    patient = {"id": pid, "name": f"Name^{pid}", "weight_kg": 72.0, "height_m": 1.75, "sex": "M"}
    scan = {"acquisition_datetime": when, "injection_datetime": when - dt.timedelta(minutes=60), "dose_bq": 3.2e8,
            "half_life_s": 6586.2, "frame_duration_s": 120.0,
            "study_uid": pydicom.uid.generate_uid(entropy_srcs=[pid, when.isoformat()])}
    write_pet_series(folder / "PET", suv, spacing=SPACING, origin=ORIGIN, patient=patient, scan=scan)
    if ct:
        write_ct_series(folder / "CT", np.zeros(SHAPE), spacing=SPACING, origin=ORIGIN, patient=patient, scan=scan)
    if flip:
        _rewrite(folder / "PET", _flip)


def _rewrite(folder, fn):
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        fn(ds)
        ds.save_as(path)


def _flip(ds):
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    ds.ImageOrientationPatient = [-1, 0, 0, 0, -1, 0]
    ds.ImagePositionPatient = [x + (ds.Columns - 1) * SPACING[2], y + (ds.Rows - 1) * SPACING[1], z]


def _shift_z(ds):
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    ds.ImagePositionPatient = [x, y, z + 2.0]


def _pet_headers(folder):
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]
    order = slice_geometry(headers)[0]
    return [headers[i] for i in order]


def _source_seg(pet_dir, out_path):
    """A DICOM SEG of two touching lesion segments on the PET (its own labels), as an expert tool writes it."""
    headers = _pet_headers(pet_dir)
    frames = np.zeros(SHAPE, np.uint8)
    frames[1:3, 2:5, 3:6] = 1
    frames[1:3, 2:5, 6:8] = 2           # touches segment 1: stays its own lesion (instances)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=k, segment_label=label, segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion, algorithm_type="MANUAL") for k, label in ((1, "Node left"),
                                                                                              (2, "Node right"))]
    seg = hd.seg.Segmentation(source_images=headers, pixel_array=frames, segmentation_type="BINARY",
                              segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=50,
                              sop_instance_uid=hd.UID(), instance_number=1, manufacturer="expert tool",
                              manufacturer_model_name="x", software_versions="1", device_serial_number="1")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(out_path)


def _ctx(store, key, baseline=None):
    return StageContext(store=store, key=key, attrs=store.study_attrs(key), config=RunConfig(), baseline_key=baseline)


def _commit(store, key, stage, fn, baseline=None):
    out = fn(_ctx(store, key, baseline))
    store.commit_stage(key, stage, arrays=out.arrays, record={"summary": out.summary})


def _lesion_mask(*boxes):
    m = np.zeros(SHAPE, np.uint8)
    for box in boxes:
        m[box] = 1
    return m


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    src = root / "archive"
    _write_study(src / "a0", "EXP-A", T0, seed=1, ct=True, flip=True)       # tracked pair, flipped rows/columns
    _write_study(src / "a1", "EXP-A", T0 + dt.timedelta(days=60), seed=2, flip=True)
    _write_study(src / "b0", "EXP-B", T0, seed=3)                           # lesions from an ingested DICOM SEG
    _source_seg(src / "b0" / "PET", src / "b0" / "SEG" / "seg.dcm")
    _write_study(src / "c0", "EXP-C", T0, seed=4)                           # source changed after ingest
    _write_study(src / "d0", "EXP-D", T0, seed=5)                           # source gone after ingest
    _write_study(src / "e0", "EXP-E", T0, seed=6)                           # never quantified
    store_path = root / "store"
    result = ingest_tree(src, store_path)
    assert not result["failed"], result["failed"]
    store = CohortStore.open(store_path)
    key = {p: f"{store.pseudonym(f'EXP-{p[0].upper()}')}-T{p[1]}" for p in ("a0", "a1", "b0", "c0", "d0", "e0")}
    assert set(key.values()) == set(store.study_keys())
    store.write_arrays(key["a0"], {"seg/manual": _lesion_mask(np.s_[1:3, 2:5, 3:6], np.s_[4:6, 6:9, 1:3]),
                                   "seg/nnunet_bl": np.zeros(SHAPE, np.uint8)})          # empty: SR only
    store.write_arrays(key["a1"], {"seg/manual": _lesion_mask(np.s_[1:3, 2:5, 4:7], np.s_[3:5, 0:2, 9:12])})
    for k in ("c0", "d0", "e0"):
        store.write_arrays(key[k], {"seg/manual": _lesion_mask(np.s_[1:3, 2:5, 3:6])})
    for k in ("a0", "a1", "b0", "c0", "d0"):
        _commit(store, key[k], "quantify", quantify_stage)
    _commit(store, key["a1"], "track", track_stage, baseline=key["a0"])
    _rewrite(src / "c0" / "PET", _shift_z)
    shutil.rmtree(src / "d0")
    out = root / "out"
    report = export_dicom(store, src, out)
    return {"store": store, "src": src, "out": out, "key": key, "report": report}


def _read_seg_labels(path, headers, flips):
    seg = hd.seg.segread(path)
    uids = [str(ds.SOPInstanceUID) for ds in headers]
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True,
                                               skip_overlap_checks=True)
    return seg, source_frames(frames, flips)


def test_report_lists_exports_and_named_skips(cohort):
    key, report = cohort["key"], cohort["report"]
    on_disk = json.loads((cohort["out"] / REPORT_NAME).read_text())
    assert on_disk == report
    exported = {(e["study"], e["source"]) for e in report["exported"]}
    assert exported == {(key["a0"], "manual"), (key["a0"], "nnunet_bl"), (key["a1"], "manual"),
                        (key["b0"], "manual")}
    skipped = {e["study"]: e["reason"] for e in report["skipped"]}
    assert skipped == {key["c0"]: "EXPORT_GEOMETRY_MISMATCH", key["d0"]: "EXPORT_SOURCE_NOT_FOUND",
                       key["e0"]: "EXPORT_NOT_QUANTIFIED"}
    empty = next(e for e in report["exported"] if e["source"] == "nnunet_bl")
    assert empty["lesions"] == 0 and empty["seg"] is None and (cohort["out"] / empty["sr"]).exists()
    # pseudonyms only: no patient id, name or UID in the report or the file names
    text = json.dumps(report) + " ".join(str(p.relative_to(cohort["out"])) for p in cohort["out"].rglob("*"))
    assert "EXP-" not in text and "Name^" not in text and "1.2." not in text


def test_files_pass_dciodvfy(cohort):
    files = sorted(cohort["out"].rglob("*.dcm"))
    assert len(files) == 7          # 4 SR + 3 SEG
    for path in files:
        errors = dciodvfy_errors(path)
        if errors is None:
            pytest.skip("dciodvfy (dicom3tools) is not installed")
        assert errors == [], path.relative_to(cohort["out"])


@pytest.mark.parametrize("study", ["a0", "a1", "b0"])
def test_seg_masks_equal_the_store(cohort, study):
    store, key = cohort["store"], cohort["key"][study]
    headers = _pet_headers(cohort["src"] / study / "PET")
    flips = slice_geometry(headers)[3]
    assert flips == ((True, True) if study.startswith("a") else (False, False))
    seg, labels = _read_seg_labels(cohort["out"] / key / "manual" / "seg.dcm", headers, flips)
    assert seg.PatientID == headers[0].PatientID and seg.StudyInstanceUID == headers[0].StudyInstanceUID
    assert np.array_equal(labels > 0, store.read_array(key, "seg/manual") > 0)        # union
    rows = store.stage_record(key, "quantify")["summary"]["lesions"]["manual"]
    assert len(seg.SegmentSequence) == len(rows)
    for row in rows:                                                                     # per lesion
        assert int(np.count_nonzero(labels == row["lesion"])) == row["voxels"]
    if study == "b0":   # instances kept (the two segments touch) with the expert's labels
        assert [d.SegmentLabel for d in seg.SegmentSequence] == ["Node left", "Node right"]
        assert store.has_array(key, "seg/manual_instances")


def test_tracking_ids_link_timepoints(cohort):
    out, key = cohort["out"], cohort["key"]
    bl = hd.seg.segread(out / key["a0"] / "manual" / "seg.dcm")
    fu = hd.seg.segread(out / key["a1"] / "manual" / "seg.dcm")
    assert [d.SegmentLabel for d in bl.SegmentSequence] == ["Lesion 1 track 1", "Lesion 2"]
    assert [d.SegmentLabel for d in fu.SegmentSequence] == ["Lesion 1 track 1", "Lesion 2"]
    assert bl.SegmentSequence[0].TrackingUID == fu.SegmentSequence[0].TrackingUID
    assert "TrackingUID" not in fu.SegmentSequence[1]
    assert bl.SegmentSequence[0].SegmentAlgorithmType == "MANUAL"
    sr = hd.sr.srread(out / key["a1"] / "manual" / "sr.dcm")
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert groups[0].tracking_uid == bl.SegmentSequence[0].TrackingUID


_SR_KEYS = {("126401", "56851009"): "suvmax", ("126401", "373098007"): "suvmean", ("126401", "126031"): "suvpeak",
            ("126405", "126031"): "sulpeak", ("118565006", None): "mtv_ml", ("126032", None): "mtv_ml",
            ("126033", None): "tlg"}


def test_sr_values_equal_the_lesions_table(cohort):
    store, out = cohort["store"], cohort["out"]
    table = lesions_frame(gather(store))
    checked = 0
    for entry in cohort["report"]["exported"]:
        sr = hd.sr.srread(out / entry["sr"])
        seg = hd.seg.segread(out / entry["seg"]) if entry["seg"] else None
        rows = table[(table["study"] == entry["study"]) & (table["source"] == entry["source"])]
        groups = sr.content.get_volumetric_roi_measurement_groups()
        assert len(groups) == len(rows) == entry["lesions"]
        for group in groups:
            (number,) = group.referenced_segment.referenced_segment_numbers
            assert group.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
            row = rows[rows["lesion"] == number].iloc[0]                   # segment k = lesion k
            assert group.tracking_identifier == seg.get_segment_description(number).segment_label
            got = {(m.name.value, m.derivation.value if m.derivation else None): m.value
                   for m in group.get_measurements()}
            assert set(got) == set(_SR_KEYS)                              # SUL available for these studies
            for code, column in _SR_KEYS.items():
                assert np.float32(got[code]) == np.float32(row[column]), (entry, number, column)
                checked += 1
        (whole,) = sr.content.get_image_measurement_groups()
        study = store.stage_record(entry["study"], "quantify")["summary"]["sources"][entry["source"]]
        totals = {m.name.value: m.value for m in whole.get_measurements() if m.derivation is None}
        assert np.float32(totals["126032"]) == np.float32(study["mtv_ml"])
        assert np.float32(totals["126033"]) == np.float32(study["tlg"])
    assert checked == 7 * (2 + 2 + 2)


def test_source_filter_and_cli(cohort, tmp_path):
    from typer.testing import CliRunner

    from petcohort.pipelines.cli import app

    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["export-dicom", "--store", str(cohort["store"].url), "--source",
                                      str(cohort["src"]), "--out", str(out), "--sources", "nnunet_bl"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / REPORT_NAME).read_text())
    key = cohort["key"]
    assert [(e["study"], e["source"]) for e in report["exported"]] == [(key["a0"], "nnunet_bl")]
    missing = {(e["study"], e["source"]): e["reason"] for e in report["skipped"] if e["source"]}
    assert missing == {(key[k], "nnunet_bl"): "EXPORT_SOURCE_MISSING" for k in ("a1", "b0")}
