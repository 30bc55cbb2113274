"""``synthesize``: store contents, determinism, formats, MIPs, bad parameters."""
from __future__ import annotations

import numpy as np
import pytest
from petcohort.engine.errors import InputError
from petcohort.pipelines.synthetic import synthesize

TINY = {"voxel_mm": 10.0, "fov_scale": 0.4}
SECRET = "synthetic-test-secret-0123456789"


@pytest.fixture(autouse=True)
def _shared_secret(monkeypatch):
    # one pseudonym key so two stores get the same study keys
    monkeypatch.setenv("PETCOHORT_PSEUDONYM_KEY", SECRET)


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    pytest.importorskip("petcohort.storage.store")
    mp = pytest.MonkeyPatch()
    mp.setenv("PETCOHORT_PSEUDONYM_KEY", SECRET)
    out = tmp_path_factory.mktemp("synth") / "cohort.zarr"
    summary = synthesize(out, patients=3, sites=2, seed=3, **TINY)
    mp.undo()
    from petcohort.storage.store import CohortStore

    return summary, CohortStore.open(out, mode="r")


def test_store_contents(tiny_store):
    summary, store = tiny_store
    keys = store.study_keys()
    assert summary["studies"] == len(keys) and summary["patients"] == 3
    required = {"pet", "ct", "seg/manual", "truth/lesion_ids", "organs/bone", "organs/liver", "organs/aorta",
                "organs/brain", "organs/bladder", "organs/kidneys", "organs/heart"}
    for key in keys:
        assert key.startswith("P-") and "SYN" not in key
        assert required <= set(store.array_names(key))
        a = store.study_attrs(key)
        assert a["source"] == "synthetic" and a["study"] == key and a["site"] in ("A", "B")
        for field in ("patient", "timepoint", "days_since_baseline", "scanner", "spacing", "origin",
                      "weight_kg", "height_m", "sex", "injected_dose_bq", "uptake_min", "suv", "sul_per_suvbw"):
            assert field in a, field
        assert "SYN" not in str(a)
        pet = store.read_array(key, "pet")
        assert pet.dtype == np.float32 and pet.ndim == 3
        ids = store.read_array(key, "truth/lesion_ids")
        assert ids.dtype == np.uint16
        assert np.array_equal(store.read_array(key, "seg/manual") > 0, ids > 0)
        truth = a["truth"]
        assert {"percist", "designed_response", "lesions"} <= set(truth)
        if a["timepoint"] == 0:
            assert truth["designed_response"] is None
        else:
            assert truth["designed_response"] in ("CMR", "PMR", "SMD", "PMD")
        assert {les["id"] for les in truth["lesions"]} == set(np.unique(ids[ids > 0]).tolist())
        # SUL factor = Janmahasatian LBM / W
        w, h = a["weight_kg"], a["height_m"]
        bmi = w / h ** 2
        lbm = 9270 * w / ((8780 + 244 * bmi) if a["sex"] == "F" else (6680 + 216 * bmi))
        assert a["sul_per_suvbw"] == pytest.approx(lbm / w)


def test_stored_pet_is_dicom_roundtrip(tiny_store):
    from petcohort.storage.dicom_write import decode_pet_int16, encode_pet_int16

    _, store = tiny_store
    key = store.study_keys()[0]
    pet = store.read_array(key, "pet")
    f = store.study_attrs(key)["suv"]["bw_factor"]
    stored, slopes = encode_pet_int16(pet, f)
    assert np.array_equal(decode_pet_int16(stored, slopes, f), pet)


def test_lesion_ids_stable_across_visits(tiny_store):
    _, store = tiny_store
    by_patient: dict[str, list] = {}
    for key in store.study_keys():
        a = store.study_attrs(key)
        by_patient.setdefault(a["patient"], []).append(a)
    for visits in by_patient.values():
        visits.sort(key=lambda a: a["timepoint"])
        base = {les["id"]: les for les in visits[0]["truth"]["lesions"]}
        for a in visits[1:]:
            for les in a["truth"]["lesions"]:
                if les["id"] in base:  # same lesion, same organ, near the same place
                    assert les["organ"] == base[les["id"]]["organ"]
                    assert np.linalg.norm(np.subtract(les["centre_mm"], base[les["id"]]["centre_mm"])) < 60
                if les["first_visit"] > 0:  # a new lesion never reuses a baseline id
                    assert les["id"] not in base


def test_determinism_same_bytes(tmp_path, tiny_store):
    summary, store = tiny_store
    again = synthesize(tmp_path / "again.zarr", patients=3, sites=2, seed=3, **TINY)
    from petcohort.storage.store import CohortStore

    other = CohortStore.open(tmp_path / "again.zarr", mode="r")
    assert other.study_keys() == store.study_keys()
    for key in store.study_keys():
        for name in ("pet", "ct", "truth/lesion_ids"):
            assert store.read_array(key, name).tobytes() == other.read_array(key, name).tobytes()
        assert other.study_attrs(key)["truth"] == store.study_attrs(key)["truth"]
    assert again["lesions"] == summary["lesions"]


def test_patients_independent_of_count(tmp_path, tiny_store):
    _, store = tiny_store
    synthesize(tmp_path / "two.zarr", patients=2, sites=2, seed=3, **TINY)
    from petcohort.storage.store import CohortStore

    two = CohortStore.open(tmp_path / "two.zarr", mode="r")
    assert set(two.study_keys()) < set(store.study_keys())
    key = two.study_keys()[0]
    assert np.array_equal(two.read_array(key, "pet"), store.read_array(key, "pet"))


def test_mips_written(tiny_store):
    summary, _ = tiny_store
    assert len(summary["mips"]) == 2
    for path in summary["mips"]:
        with open(path, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_nifti_format(tmp_path):
    nifti = pytest.importorskip("petcohort.storage.nifti")
    summary = synthesize(tmp_path / "nii", patients=1, sites=1, seed=1, fmt="nifti", **TINY)
    folders = sorted(p.parent for p in (tmp_path / "nii").rglob(nifti.PET_FILE))
    assert len(folders) == summary["studies"]
    st = nifti.read_study_folder(folders[0])
    assert st.seg is not None and st.pet.dtype == np.float32
    assert (folders[0] / "truth" / "truth_lesion_ids.nii.gz").is_file()


def test_dicom_format(tmp_path):
    pytest.importorskip("petcohort.storage.dicom_write")
    summary = synthesize(tmp_path / "dcm", patients=1, sites=1, seed=1, fmt="dicom", **TINY)
    pt = sorted((tmp_path / "dcm").rglob("PT"))
    assert len(pt) == summary["studies"] and all(any(p.iterdir()) for p in pt)
    assert len(sorted((tmp_path / "dcm").rglob("CT"))) == summary["studies"]
    assert len(list((tmp_path / "dcm").rglob("seg_manual.nii.gz"))) == summary["studies"]


@pytest.mark.parametrize("kwargs, name", [
    ({"patients": 0}, "patients"), ({"patients": -2}, "patients"), ({"patients": 1.5}, "patients"),
    ({"sites": 0}, "sites"), ({"sites": 3}, "sites"), ({"seed": -1}, "seed"),
    ({"fmt": "png"}, "fmt"), ({"voxel_mm": -4.0}, "voxel_mm"), ({"voxel_mm": 0.0}, "voxel_mm"),
    ({"fov_scale": 0.0}, "fov_scale"), ({"fov_scale": -1.0}, "fov_scale"),
])
def test_bad_parameters(tmp_path, kwargs, name):
    with pytest.raises(InputError) as info:
        synthesize(tmp_path / "bad", **kwargs)
    assert info.value.reason == "BAD_VALUE"
    assert name in info.value.message
    assert not (tmp_path / "bad").exists()  # refused before anything is written


def test_truth_percist_matches_design(tmp_path):
    """Ground truth from the noise-free SUL images (team PERCIST module) agrees with the design."""
    pytest.importorskip("petcohort.engine.stats.percist")
    summary = synthesize(tmp_path / "full.zarr", patients=4, sites=1, seed=5, voxel_mm=6.0)
    from petcohort.storage.store import CohortStore

    store = CohortStore.open(tmp_path / "full.zarr", mode="r")
    designed, truth = [], []
    for key in store.study_keys():
        t = store.study_attrs(key)["truth"]
        if t["designed_response"] is not None:
            designed.append(t["designed_response"])
            truth.append(t["percist"])
    assert set(designed) == {"CMR", "PMR", "SMD", "PMD"}
    assert truth == designed
    assert summary["designed_equals_truth"] == len(designed)


@pytest.mark.parametrize("fmt", ["dicom", "nifti"])
def test_formats_carry_the_same_suvs(tmp_path, tiny_store, fmt):
    """DICOM and NIfTI output, ingested, give the store's keys, PET bytes and SUL factors."""
    ingest = pytest.importorskip("petcohort.pipelines.ingest")
    _, ref = tiny_store
    synthesize(tmp_path / fmt, patients=3, sites=2, seed=3, fmt=fmt, **TINY)
    report = ingest.ingest_tree(tmp_path / fmt, tmp_path / "ingested.zarr")
    assert not report["failed"]
    from petcohort.storage.store import CohortStore

    got = CohortStore.open(tmp_path / "ingested.zarr", mode="r")
    assert got.study_keys() == ref.study_keys()
    for key in ref.study_keys():
        assert np.array_equal(got.read_array(key, "pet"), ref.read_array(key, "pet"))
        a, b = got.study_attrs(key), ref.study_attrs(key)
        assert a["timepoint"] == b["timepoint"] and a["days_since_baseline"] == b["days_since_baseline"]
        assert a["sul_per_suvbw"] == pytest.approx(b["sul_per_suvbw"], rel=1e-9)
