"""Real-archive ingest: AC/NAC selection, PET without CT, DICOM SEG / RTSTRUCT masks, bad input (issue: real DICOM).

The studies are small synthetic PET series written as real DICOM files
(tests/dicom_fixtures.py), with masks written by highdicom (SEG) and pydicom
(RTSTRUCT). Each lesion is painted with its own SUV so that the per-lesion
values can be checked against the painted truth.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from dicom_fixtures import lps_contour, write_pet_series, write_rtstruct, write_seg
from petcohort.engine.errors import ConfigError
from petcohort.engine.kernels import lesions as lesion_kernels
from petcohort.pipelines.config import RunConfig
from petcohort.pipelines.ingest import ingest_tree
from petcohort.pipelines.stage_quantify import quantify_stage
from petcohort.pipelines.stages import StageContext
from petcohort.storage.store import CohortStore

SHAPE, SPACING, ORIGIN = (6, 16, 18), (4.0, 4.0, 4.0), (-10.0, -30.0, -36.0)


def _lesion_masks() -> list[np.ndarray]:
    """Three lesions; the first touches the second, the third has two separate parts."""
    masks = [np.zeros(SHAPE, np.uint8) for _ in range(3)]
    masks[0][1:4, 3:6, 3:6] = 1
    masks[1][1:4, 3:6, 6:9] = 1          # face to face with lesion 1
    masks[2][2:4, 10:13, 12:15] = 1
    masks[2][4:6, 12:14, 2:4] = 1        # second, disconnected part of segment 3
    return masks


def _pet_volume(masks) -> np.ndarray:
    rng = np.random.default_rng(7)
    vol = rng.uniform(0.5, 1.5, SHAPE)
    for i, m in enumerate(masks):
        vol[m != 0] = 4.0 + 3.0 * i + rng.uniform(0, 1, int(m.sum()))
    return vol


def _study(root, *, patient_id="PCT-A", nac=True, seg=True, flip_rows=False):
    masks = _lesion_masks()
    vol = _pet_volume(masks)
    ac = write_pet_series(root / "ac", vol, SPACING, ORIGIN, patient_id=patient_id, series_description="PET AC",
                          flip_rows=flip_rows)
    if nac:
        write_pet_series(root / "nac", vol * 0.3, SPACING, ORIGIN, patient_id=patient_id, ac=False,
                         series_description="PET NAC", flip_rows=flip_rows)
    if seg:
        write_seg(root / "seg" / "seg.dcm", ac, masks, ["Lesion A", "Lesion B", "Lesion C"],
                  organ_masks={"liver": _liver()})
    return ac, masks


def _liver() -> np.ndarray:
    liver = np.zeros(SHAPE, np.uint8)
    liver[0:3, 8:14, 2:9] = 1
    return liver


def _quantify(store, key):
    ctx = StageContext(store=store, key=key, attrs=store.study_attrs(key), config=RunConfig())
    return quantify_stage(ctx).summary


def test_ac_nac_seg_study_ingests_ac_series_and_segment_lesions(tmp_path):
    _, masks = _study(tmp_path / "src")
    result = ingest_tree(tmp_path / "src", tmp_path / "cohort.zarr")
    assert result["failed"] == [] and len(result["ingested"]) == 1, result
    (key,) = result["ingested"]
    store = CohortStore.open(tmp_path / "cohort.zarr", mode="r")
    attrs = store.study_attrs(key)
    pet_sel = attrs["series_selection"]["pet"]
    assert pet_sel["rule"] == "attenuation_corrected"
    assert [c["description"] for c in pet_sel["candidates"] if c["chosen"]] == ["PET AC"]
    assert attrs["series_selection"]["ct"]["reason"] == "NO_CT_SERIES" and attrs["ct_reason"] == "NO_CT_SERIES"
    assert "ct" not in store.array_names(key)
    # the SEG's three lesion segments, the liver segment as an organ
    inst = store.read_array(key, "seg/manual_instances")
    for i, m in enumerate(masks, start=1):
        np.testing.assert_array_equal(inst == i, m != 0)
    np.testing.assert_array_equal(store.read_array(key, "seg/manual"), (inst != 0).astype(np.uint8))
    np.testing.assert_array_equal(store.read_array(key, "organs/liver"), _liver())
    manual = attrs["masks"]["manual"]
    assert manual["kind"] == "SEG" and manual["matched_by"] == "referenced_series"
    assert [s["label"] for s in manual["segments"]] == ["Lesion A", "Lesion B", "Lesion C"]
    rec = store.stage_record(key, "ingest")
    assert rec["status"] == "committed" and rec["reason"] is None
    # quantify: one lesion per segment (the touching pair stays two), segment 3 split into its two parts
    summary = _quantify(store, key)
    rows = summary["lesions"]["manual"]
    assert len(rows) == 4 and sorted(r["segment_label"] for r in rows) == ["Lesion A", "Lesion B", "Lesion C",
                                                                          "Lesion C"]
    pet = store.read_array(key, "pet")
    for row in rows:
        part = (inst == row["segment"])
        from petcohort.engine.kernels.label import label  # the part of the segment this lesion is
        parts, _ = label(part, connectivity=26)
        sel = parts == parts[tuple(np.argwhere(part & (np.abs(pet - row["suvmax"]) < 1e-6))[0])]
        single = lesion_kernels.quantify(pet, sel.astype(np.uint8), spacing=SPACING, origin=ORIGIN,
                                         sul_per_suvbw=attrs["sul_per_suvbw"], liver=_liver())
        (ref,) = single.lesions
        for k in ("voxels", "mtv_ml", "suvmax", "suvmean", "suvpeak", "sulpeak", "tlg", "centroid_mm"):
            assert row[k] == pytest.approx(ref[k], rel=1e-12), k
    assert summary["sources"]["manual"]["lesion_count"] == 4
    assert summary["sources"]["manual"]["pli"] is not None


def test_two_expert_masks_are_never_merged(tmp_path):
    ac, masks = _study(tmp_path / "src", seg=False, nac=False)
    write_seg(tmp_path / "src" / "a.dcm", ac, masks[:2], ["Reader1 lesion 1", "Reader1 lesion 2"])
    write_seg(tmp_path / "src" / "b.dcm", ac, masks[1:], ["Reader2 lesion 1", "Reader2 lesion 2"])
    result = ingest_tree(tmp_path / "src", tmp_path / "one.zarr")
    (key,) = result["ingested"]
    (warn,) = [w for w in result["warnings"] if w["key"] == key]
    assert warn["reason"] == "MASK_AMBIGUOUS" and "Reader1 lesion 1" in warn["message"]
    store = CohortStore.open(tmp_path / "one.zarr", mode="r")
    assert not store.has_array(key, "seg/manual") and store.has_array(key, "pet")
    assert store.stage_record(key, "ingest")["reason"] == "MASK_AMBIGUOUS"   # shown by the manifest
    result = ingest_tree(tmp_path / "src", tmp_path / "two.zarr", mask_label="^Reader2")
    (key,) = result["ingested"]
    store = CohortStore.open(tmp_path / "two.zarr", mode="r")
    inst = store.read_array(key, "seg/manual_instances")
    np.testing.assert_array_equal(inst == 1, masks[1] != 0)
    np.testing.assert_array_equal(inst == 2, masks[2] != 0)


def test_same_annotation_as_seg_and_rtstruct_needs_a_kind(tmp_path):
    ac, masks = _study(tmp_path / "src", seg=False, nac=False)
    write_seg(tmp_path / "src" / "seg.dcm", ac, masks[:1], ["Lesion"])
    square = np.array([[2.5, 2.5], [2.5, 5.5], [5.5, 5.5], [5.5, 2.5]])     # the same voxels as masks[0]
    write_rtstruct(tmp_path / "src" / "rt.dcm", ac,
                   [("Lesion", "GTV", [lps_contour(square, z, SPACING, ORIGIN) for z in (1, 2, 3)])])
    result = ingest_tree(tmp_path / "src", tmp_path / "a.zarr")
    (warn,) = [w for w in result["warnings"] if w["key"] is not None]
    assert warn["reason"] == "MASK_AMBIGUOUS" and "--mask-kind" in warn["message"]
    for kind in ("SEG", "rtstruct"):
        result = ingest_tree(tmp_path / "src", tmp_path / f"{kind}.zarr", mask_kind=kind)
        (key,) = result["ingested"]
        store = CohortStore.open(tmp_path / f"{kind}.zarr", mode="r")
        assert store.study_attrs(key)["masks"]["manual"]["kind"] == kind.upper()
        np.testing.assert_array_equal(store.read_array(key, "seg/manual"), masks[0])
    with pytest.raises(ConfigError):
        ingest_tree(tmp_path / "src", tmp_path / "bad.zarr", mask_kind="NIFTI")
    assert not (tmp_path / "bad.zarr").exists()


def test_rtstruct_matched_by_frame_of_reference(tmp_path):
    ac = write_pet_series(tmp_path / "src" / "ac", _pet_volume(_lesion_masks()), SPACING, ORIGIN,
                          patient_id="PCT-B", series_description="PET AC")
    square = np.array([[2.5, 2.5], [2.5, 7.5], [7.5, 7.5], [7.5, 2.5]])   # rows/cols 3..7 inclusive
    contours = [lps_contour(square, z, SPACING, ORIGIN) for z in (1, 2)]
    rt = write_rtstruct(tmp_path / "src" / "rt.dcm", ac, [("GTV-1", "GTV", contours)])
    # the referenced series UID points nowhere in the archive: only the frame of reference matches
    for item in rt.ReferencedFrameOfReferenceSequence:
        for study in item.get("RTReferencedStudySequence", []):
            for series in study.RTReferencedSeriesSequence:
                series.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    rt.save_as(tmp_path / "src" / "rt.dcm")
    result = ingest_tree(tmp_path / "src", tmp_path / "cohort.zarr")
    (key,) = result["ingested"]
    store = CohortStore.open(tmp_path / "cohort.zarr", mode="r")
    assert store.study_attrs(key)["masks"]["manual"]["matched_by"] == "frame_of_reference"
    expected = np.zeros(SHAPE, np.uint8)
    expected[1:3, 3:8, 3:8] = 1
    np.testing.assert_array_equal(store.read_array(key, "seg/manual"), expected)


def test_bad_input_is_named_and_the_rest_goes_on(tmp_path):
    src = tmp_path / "src"
    _study(src / "good", patient_id="PCT-GOOD")
    # a study with two AC PET series and no --pet-series: fails with the candidates named
    vol = _pet_volume(_lesion_masks())
    write_pet_series(src / "two" / "a", vol, SPACING, ORIGIN, patient_id="PCT-TWO", series_description="PET OSEM")
    write_pet_series(src / "two" / "b", vol, SPACING, ORIGIN, patient_id="PCT-TWO", series_description="PET PSF")
    # a SEG on another patient's study that references nothing there (other frame, other series)
    other = write_pet_series(tmp_path / "elsewhere", vol, SPACING, ORIGIN, patient_id="PCT-ELSEWHERE")
    write_seg(src / "stray" / "seg.dcm", other, _lesion_masks()[:1], ["Lesion"])
    # a malformed file with a DICOM preamble
    (src / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage")
    store_url = tmp_path / "cohort.zarr"
    result = ingest_tree(src, store_url)
    assert len(result["ingested"]) == 1
    (fail,) = result["failed"]
    assert fail["reason"] == "PET_SERIES_AMBIGUOUS" and "PET OSEM" in fail["message"] and "PET PSF" in fail["message"]
    reasons = sorted(w["reason"] for w in result["warnings"] if w["key"] is None)
    assert reasons == ["DICOM_UNREADABLE_FILE", "MASK_NO_MATCH"]
    blob = json.dumps(result)
    for secret in ("PCT-", str(tmp_path), "1.2.826.0.1.3680043"):
        assert secret not in blob
    # the user chooses; the good study is not touched again
    before = CohortStore.open(store_url, mode="r").stage_record(result["ingested"][0], "ingest")
    again = ingest_tree(src, store_url, pet_series="PSF")
    assert again["skipped"] == result["ingested"] and len(again["ingested"]) == 1
    store = CohortStore.open(store_url, mode="r")
    assert store.stage_record(result["ingested"][0], "ingest") == before
    chosen = store.study_attrs(again["ingested"][0])["series_selection"]["pet"]
    assert chosen["rule"] == "pet_series_option"
    assert [c["description"] for c in chosen["candidates"] if c["chosen"]] == ["PET PSF"]


def test_seg_on_another_grid_is_resampled_and_recorded(tmp_path):
    """A SEG drawn on a finer grid of the same frame of reference (e.g. the CT's) is sampled at PET voxel centres."""
    src = tmp_path / "src"
    ac = write_pet_series(src / "ac", _pet_volume(_lesion_masks()), SPACING, ORIGIN, patient_id="PCT-C")
    fine = write_pet_series(tmp_path / "grid2", np.ones((6, 32, 36)), (4.0, 2.0, 2.0), ORIGIN,
                            patient_id="PCT-C", series_description="PET AC fine")
    assert fine[0].FrameOfReferenceUID == ac[0].FrameOfReferenceUID
    m = np.zeros((6, 32, 36), np.uint8)
    m[2:4, 4:8, 4:8] = 1             # fine rows/cols 4..7 hold PET voxel centres 2 and 3 (2 x 2 mm per 4 mm)
    write_seg(src / "seg.dcm", fine, [m], ["Lesion"])
    result = ingest_tree(src, tmp_path / "cohort.zarr")
    (key,) = result["ingested"]
    (warn,) = [w for w in result["warnings"] if w["key"] == key]
    assert warn["reason"] == "MASK_RESAMPLED"
    store = CohortStore.open(tmp_path / "cohort.zarr", mode="r")
    expected = np.zeros(SHAPE, np.uint8)
    expected[2:4, 2:4, 2:4] = 1
    np.testing.assert_array_equal(store.read_array(key, "seg/manual"), expected)


@pytest.mark.slow
def test_pet_only_study_runs_to_tables_and_report(tmp_path):
    """PET without CT through `petcohort run` and `report`; only the CT-needing stage fails, with NO_CT."""
    import subprocess
    import sys
    from pathlib import Path

    import pandas as pd

    _study(tmp_path / "src", patient_id="PCT-PETONLY")
    exe = Path(sys.executable).with_name("petcohort")
    store, out = tmp_path / "cohort.zarr", tmp_path / "out"
    subprocess.run([str(exe), "ingest", str(tmp_path / "src"), "--store", str(store)], check=True,
                   capture_output=True)
    demo = Path(__file__).resolve().parents[2] / "models" / "demo"
    demo_bl = next(iter(sorted(demo.glob("Dataset501_*/*__3d_fullres"))), None)
    if demo_bl is None:
        pytest.skip("the demo U-Net_BL (models/demo/Dataset501_*) is not in this checkout")
    shutil.copy(Path(__file__).resolve().parents[2] / "cluster.yaml", tmp_path / "cluster.yaml")
    run = subprocess.run([str(exe), "run", "--store", str(store), "--out", str(out), "--model-bl", str(demo_bl),
                          "--cluster", str(tmp_path / "cluster.yaml")], capture_output=True, text=True)
    manifest = subprocess.run([str(exe), "manifest", "--store", str(store), "--json"], capture_output=True,
                              text=True)
    rows = json.loads(manifest.stdout)
    failed = {(r["stage"], r["reason"]) for r in rows if r["status"] == "failed"}
    assert failed == {("segment_bl", "NO_CT")}, (failed, run.stdout[-2000:], run.stderr[-2000:])
    committed = {r["stage"] for r in rows if r["status"] == "committed"}
    assert {"ingest", "organs", "threshold", "quantify", "qc"} <= committed
    lesions = pd.read_csv(out / "tables" / "lesions.csv")
    manual = lesions[lesions["source"] == "manual"]
    assert len(manual) == 4 and set(manual["segment_label"]) == {"Lesion A", "Lesion B", "Lesion C"}
    subprocess.run([str(exe), "report", "--store", str(store), "--out", str(out)], check=True, capture_output=True)
    assert (out / "report.html").stat().st_size > 0
