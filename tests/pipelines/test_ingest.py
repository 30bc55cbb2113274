"""pipelines/ingest.py: suv_report and ingest_tree (DICOM PET/CT trees, autoPET NIfTI folders)."""
import datetime as dt
import json
import logging
import math

import numpy as np
import pytest

from petcohort.pipelines.ingest import INDEX, ingest_tree, suv_report
from petcohort.storage.dicom_write import write_ct_series, write_pet_series
from petcohort.storage.nifti import write_study_folder
from petcohort.storage.resample import resample_to_grid
from petcohort.storage.store import CohortStore

HL = 6586.2
LAM = math.log(2) / HL
PET_SP, PET_OR = (4.0, 3.0, 3.0), (-100.0, -9.0, -12.0)
CT_SP, CT_OR = (2.0, 1.5, 1.5), (-101.0, -9.75, -12.75)
SECRET_WORDS = ("Doe", "Jane", "Roe", "MRN-000123", "MRN-000456", "1.2.999")


def _study(root, patient, t0, study_uid, *, seed, weight=70.0, omit=()):
    rng = np.random.default_rng(seed)
    scan = {"acquisition_datetime": t0, "injection_datetime": t0 - dt.timedelta(minutes=61), "dose_bq": 3.2e8,
            "half_life_s": HL, "frame_duration_s": 120.0, "study_uid": study_uid, "site": "Site A",
            "manufacturer": "GE", "model": "Discovery MI"}
    pat = {**patient, "weight_kg": weight}
    folder = root / patient["name"].replace("^", "_") / t0.strftime("%Y%m%d")
    pet = write_pet_series(folder / "PET", rng.gamma(2, 1, (5, 6, 7)), spacing=PET_SP, origin=PET_OR,
                           patient=pat, scan=scan, omit=omit)
    ct = write_ct_series(folder / "CT", rng.integers(-1000, 1000, (10, 12, 14)), spacing=CT_SP, origin=CT_OR,
                         patient=pat, scan=scan)
    return folder, pet, ct


@pytest.fixture()
def tree(tmp_path):
    root = tmp_path / "src"
    jane = {"id": "MRN-000123", "name": "Doe^Jane", "height_m": 1.64, "sex": "F"}
    rob = {"id": "MRN-000456", "name": "Roe^Rob", "height_m": 1.80, "sex": "M"}
    out = {
        "jane_fu": _study(root, jane, dt.datetime(2024, 4, 10, 9, 30), "1.2.999.2", seed=1),
        "jane_bl": _study(root, jane, dt.datetime(2024, 2, 20, 11, 0), "1.2.999.1", seed=2),
        "rob_bl": _study(root, rob, dt.datetime(2024, 3, 5, 8, 0), "1.2.999.3", seed=3, omit=("PatientWeight",)),
    }
    return root, out


def test_suv_report_fields_and_refusals(tmp_path, tree):
    root, studies = tree
    folder, pet, _ = studies["jane_bl"]
    r = suv_report(folder, overrides={})        # PET and CT in the folder: the PET series is chosen
    expected = 70_000.0 / (3.2e8 * math.exp(-LAM * 61 * 60.0))
    assert r["reason"] is None and r["suv_bw_factor"] == pytest.approx(expected, rel=1e-12)
    for k in ("suv_bw_factors", "suv_lbm_factor", "suv_lbm_reason", "units", "decay_correction", "reference_time",
              "reference_rule", "injection_time", "dose_bq", "dose_unit_converted", "half_life_s", "weight_kg",
              "height_m", "sex", "lbm_kg", "overrides", "message"):
        assert k in r
    json.dumps(r)
    r = suv_report(studies["rob_bl"][0] / "PET", overrides={})
    assert r["reason"] == "SUV_MISSING_WEIGHT" and r["suv_bw_factor"] is None
    r = suv_report(studies["rob_bl"][0] / "PET", overrides={"weight_kg": 81.0})
    assert r["reason"] is None and r["overrides"] == {"weight_kg": 81.0}
    assert suv_report(tmp_path / "src", overrides={})["reason"] == "DICOM_MIXED_SERIES"
    (tmp_path / "empty").mkdir()
    assert suv_report(tmp_path / "empty", overrides={})["reason"] == "DICOM_NO_SERIES"
    assert suv_report(folder, overrides={"sex": "unknown"})["reason"] == "SUV_BAD_OVERRIDE"


def test_ingest_dicom_tree(tmp_path, tree, caplog):
    root, studies = tree
    url = tmp_path / "cohort.zarr"
    with caplog.at_level(logging.DEBUG):
        result = ingest_tree(root, url, overrides={})
    store = CohortStore.open(url, mode="r")
    jane = store.pseudonym("MRN-000123")
    assert sorted(result["ingested"]) == [f"{jane}-T0", f"{jane}-T1"]
    (fail,) = result["failed"]
    assert fail["reason"] == "SUV_MISSING_WEIGHT" and fail["source"].startswith("dicom/S-")
    rob_key = f"{store.pseudonym('MRN-000456')}-T0"
    assert fail["key"] == rob_key
    rec = store.stage_record(rob_key, "ingest")
    assert rec["status"] == "failed" and rec["reason"] == "SUV_MISSING_WEIGHT"
    # baseline = earlier scan, whatever the tree order
    bl, fu = store.study_attrs(f"{jane}-T0"), store.study_attrs(f"{jane}-T1")
    assert bl["timepoint"] == 0 and bl["days_since_baseline"] == 0
    assert fu["timepoint"] == 1 and fu["days_since_baseline"] == (dt.date(2024, 4, 10) - dt.date(2024, 2, 20)).days
    assert bl["patient"] == jane and bl["source"] == "dicom" and bl["sex"] == "F"
    assert bl["spacing"] == list(PET_SP) and bl["origin"] == list(PET_OR)
    assert bl["uptake_min"] == pytest.approx(61.0) and bl["injected_dose_bq"] == 3.2e8
    lbm = 9270 * 70.0 / (8780 + 244 * 70.0 / 1.64 ** 2)
    assert bl["sul_per_suvbw"] == pytest.approx(lbm / 70.0) and bl["sul_reason"] is None
    assert bl["suv"]["reference_rule"] == "series_time" and bl["suv"]["units"] == "BQML"
    # arrays: the SUV the DICOM encodes, and the CT resampled onto the PET grid
    pet = store.read_array(f"{jane}-T0", "pet")
    np.testing.assert_array_equal(pet, studies["jane_bl"][1]["suv"])
    ct = store.read_array(f"{jane}-T0", "ct")
    expected_ct = resample_to_grid(studies["jane_bl"][2]["hu"].astype(np.float32), CT_SP, CT_OR, pet.shape,
                                   PET_SP, PET_OR, default=-1000)
    assert ct.dtype == np.int16 and ct.shape == pet.shape
    np.testing.assert_array_equal(ct, np.rint(expected_ct).astype(np.int16))
    # privacy: no raw identifier in keys, attrs, result, index or logs
    blob = json.dumps([result, store.read_json(INDEX)] + [store.study_attrs(k) for k in store.study_keys()])
    blob += caplog.text
    for word in SECRET_WORDS:
        assert word not in blob


def test_reingest_skips_done_and_retries_failed(tmp_path, tree):
    root, _ = tree
    url = tmp_path / "cohort.zarr"
    first = ingest_tree(root, url, overrides={})
    second = ingest_tree(root, url, overrides={"weight_kg": 82.0})
    assert sorted(second["skipped"]) == sorted(first["ingested"]) and second["failed"] == []
    (rob_key,) = second["ingested"]
    store = CohortStore.open(url, mode="r")
    assert store.stage_record(rob_key, "ingest")["status"] == "committed"
    attrs = store.study_attrs(rob_key)
    assert attrs["weight_kg"] == 82.0 and attrs["suv"]["overrides"] == {"weight_kg": 82.0}
    assert attrs["ingest_failed"] is False and store.has_array(rob_key, "pet")


def test_ingest_nifti_autopet_folders(tmp_path):
    root = tmp_path / "nifti"
    rng = np.random.default_rng(5)
    shape, sp, org = (4, 5, 6), (3.0, 2.0, 2.0), (0.0, 0.0, 0.0)
    for i, date in enumerate(["2023-05-02", "2023-03-01"]):
        pet = rng.gamma(2, 1, shape).astype(np.float32)
        write_study_folder(root / "patient-a" / f"s{i}", pet=pet, ct=rng.integers(-900, 900, shape), seg=pet > 3,
                           spacing=sp, origin=org,
                           meta={"patient_id": "MRN-000123", "weight_kg": 60.0, "height_m": 1.60, "sex": "F",
                                 "scan_datetime": f"{date}T10:00:00", "uptake_min": 60.0, "site": "B"})
    bad = root / "patient-b" / "s0"
    write_study_folder(bad, pet=np.zeros(shape), ct=np.zeros(shape), seg=None, spacing=sp, origin=org,
                       meta={"patient_id": "MRN-000456", "sex": "O", "weight_kg": 90.0, "height_m": 1.7})
    (bad / "CTres.nii.gz").write_bytes(b"not a nifti")
    result = ingest_tree(root, tmp_path / "cohort.zarr", overrides={})
    store = CohortStore.open(tmp_path / "cohort.zarr", mode="r")
    key = store.pseudonym("MRN-000123")
    assert sorted(result["ingested"]) == [f"{key}-T0", f"{key}-T1"]
    (fail,) = result["failed"]
    assert fail["source"].startswith("nifti/S-") and fail["reason"] == "NIFTI_UNREADABLE"
    assert store.stage_record(fail["key"], "ingest")["reason"] == "NIFTI_UNREADABLE"
    assert fail["key"] == f"{store.pseudonym('MRN-000456')}-T0" and "patient-b" not in json.dumps(result)
    bl = store.study_attrs(f"{key}-T0")
    assert store.study_attrs(f"{key}-T1")["days_since_baseline"] == 62
    lbm = 9270 * 60.0 / (8780 + 244 * 60.0 / 1.6 ** 2)
    assert bl["sul_per_suvbw"] == pytest.approx(lbm / 60.0) and bl["source"] == "nifti"
    assert store.array_names(f"{key}-T0") == ["ct", "pet", "seg/manual"]
    assert store.read_array(f"{key}-T0", "seg/manual").dtype == np.uint8


def test_missing_source_and_bad_override_raise_before_writing(tmp_path):
    from petcohort.engine.errors import InputError, SuvError

    with pytest.raises(InputError) as e:
        ingest_tree(tmp_path / "nope", tmp_path / "cohort.zarr", overrides={})
    assert e.value.reason == "FILE_NOT_FOUND"
    with pytest.raises(SuvError) as e:
        ingest_tree(tmp_path, tmp_path / "cohort.zarr", overrides={"weight_kg": "heavy"})
    assert e.value.reason == "SUV_BAD_OVERRIDE"
    assert not (tmp_path / "cohort.zarr").exists()


def test_ingest_uses_the_run_configuration_suv_section(tmp_path, tree):
    """`ingest --set suv.lbm=james`: SUL by James' formula, recorded; a bad value fails before any study."""
    from typer.testing import CliRunner

    from petcohort.pipelines.cli import app

    root, _ = tree
    url = tmp_path / "cohort.zarr"
    bad = CliRunner().invoke(app, ["ingest", str(root), "--store", str(url), "--set", "suv.lbm=boer"])
    assert bad.exit_code != 0 and "suv.lbm" in bad.output and not url.exists()
    ok = CliRunner().invoke(app, ["ingest", str(root), "--store", str(url), "--set", "suv.lbm=james"])
    assert ok.exit_code == 1, ok.output          # Rob's study has no weight: recorded as failed, exit 1
    store = CohortStore.open(url, mode="r")
    bl = store.study_attrs(f"{store.pseudonym('MRN-000123')}-T0")
    james = 1.07 * 70.0 - 148 * (70.0 / (1.64 * 100)) ** 2          # James 1976, women (kg; height in cm)
    assert bl["suv"]["lbm_formula"] == "james" and bl["sul_per_suvbw"] == pytest.approx(james / 70.0)
