"""The pseudonym key outside the store: sources, default key file, permissions, fingerprint refusal,
legacy stores with an embedded key and ``petcohort key export``, and a store free of key and identifiers."""
from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from petcohort.engine.errors import ConfigError, StoreError
from petcohort.storage.key_file import (ENV_PSEUDONYM_KEY, ENV_PSEUDONYM_KEY_FILE, key_fingerprint, read_key_file,
                                        resolve_key, settings, write_key_file)
from petcohort.storage.keys import pseudonym
from petcohort.storage.store import FINGERPRINT_ATTR, SECRET_KEY, CohortStore

KEY = "P-0123456789-T0"
KEY_A = "site-a-pseudonym-key-0123456789"
KEY_B = "site-b-pseudonym-key-9876543210"
# 32 "random" bytes, as the old CohortStore.create embedded them (not valid UTF-8 on purpose)
LEGACY_SECRET = bytes(range(200, 232))


@pytest.fixture
def no_key(monkeypatch, tmp_path) -> Path:
    """No key configured; HOME and XDG_CONFIG_HOME point into tmp_path. Returns the default key file path."""
    monkeypatch.delenv(ENV_PSEUDONYM_KEY, raising=False)
    monkeypatch.delenv(ENV_PSEUDONYM_KEY_FILE, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "petcohort" / "pseudonym.key"


def _key_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text + "\n")
    os.chmod(path, mode)
    return path


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file of a folder with its bytes (to prove that nothing changed)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _root_attrs(root: Path) -> dict:
    return json.loads((root / "zarr.json").read_text())["attributes"]


def _store_with_study(path: Path) -> CohortStore:
    store = CohortStore.create(path)
    store.add_study(KEY, {"timepoint": 0})
    store.write_arrays(KEY, {"pet": np.ones((2, 2, 2), np.float32)})
    return store


def _make_legacy(path: Path, monkeypatch) -> CohortStore:
    """A store as petcohort made it before key files: pseudonym.key inside, no fingerprint."""
    monkeypatch.setenv(ENV_PSEUDONYM_KEY, KEY_A)
    _store_with_study(path)
    monkeypatch.delenv(ENV_PSEUDONYM_KEY)
    meta = json.loads((path / "zarr.json").read_text())
    del meta["attributes"][FINGERPRINT_ATTR]
    (path / "zarr.json").write_text(json.dumps(meta))
    (path / SECRET_KEY).write_bytes(LEGACY_SECRET)
    return path


# -- sources ------------------------------------------------------------------------------------
def test_env_key_is_used_and_only_its_fingerprint_is_stored(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_PSEUDONYM_KEY, KEY_A)
    store = CohortStore.create(tmp_path / "s.zarr")
    assert store.pseudonym("PAT-001") == pseudonym("PAT-001", KEY_A.encode())
    assert store.check_pseudonym_key() == f"environment variable {ENV_PSEUDONYM_KEY}"
    assert not (tmp_path / "s.zarr" / SECRET_KEY).exists()
    fp = _root_attrs(tmp_path / "s.zarr")[FINGERPRINT_ATTR]
    assert set(fp) == {"kdf", "iterations", "salt", "digest"} and fp["kdf"] == "pbkdf2-sha256"
    assert fp["digest"] != key_fingerprint(KEY_A.encode())["digest"]   # a fresh salt per store
    assert KEY_A not in (tmp_path / "s.zarr" / "zarr.json").read_text()


def test_key_file_from_environment_matches_the_same_text_in_the_environment(tmp_path, monkeypatch):
    path = _key_file(tmp_path / "site.key", KEY_A)   # trailing newline is ignored
    monkeypatch.delenv(ENV_PSEUDONYM_KEY)
    monkeypatch.setenv(ENV_PSEUDONYM_KEY_FILE, str(path))
    store = CohortStore.create(tmp_path / "s.zarr")
    assert store.pseudonym("PAT-001") == pseudonym("PAT-001", KEY_A.encode())
    assert str(path) in store.check_pseudonym_key()
    monkeypatch.delenv(ENV_PSEUDONYM_KEY_FILE)
    monkeypatch.setenv(ENV_PSEUDONYM_KEY, KEY_A)    # same key, other source: the store accepts it
    assert CohortStore.open(tmp_path / "s.zarr").pseudonym("PAT-001") == store.pseudonym("PAT-001")


def test_environment_text_wins_over_key_file(tmp_path):
    path = _key_file(tmp_path / "site.key", KEY_B)
    key = resolve_key(settings({ENV_PSEUDONYM_KEY: KEY_A, ENV_PSEUDONYM_KEY_FILE: str(path)}))
    assert key.secret == KEY_A.encode() and KEY_A not in repr(key)


def test_base64_key_text_stands_for_raw_bytes(tmp_path):
    path = _key_file(tmp_path / "k", "base64:" + base64.b64encode(LEGACY_SECRET).decode())
    assert read_key_file(path) == LEGACY_SECRET
    _key_file(path, "base64:not base64!")
    with pytest.raises(ConfigError) as exc:
        read_key_file(path)
    assert exc.value.reason == "PSEUDONYM_KEY_SHORT"


def test_default_key_file_is_created_once_private_and_announced(no_key, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="petcohort.storage.key_file")
    store = CohortStore.create(tmp_path / "a.zarr")
    assert no_key.is_file() and _mode(no_key) == 0o600 and _mode(no_key.parent) == 0o700
    text = no_key.read_text().strip()
    assert len(text) >= 43 and store.pseudonym("PAT-001") == pseudonym("PAT-001", text.encode())
    announced = [r for r in caplog.records if r.levelno == logging.WARNING and str(no_key) in r.getMessage()]
    assert len(announced) == 1 and "back it up" in announced[0].getMessage()
    caplog.clear()
    other = CohortStore.create(tmp_path / "b.zarr")                # found, not created again
    assert other.pseudonym("PAT-001") == store.pseudonym("PAT-001") and no_key.read_text().strip() == text
    assert not [r for r in caplog.records if str(no_key) in r.getMessage()]
    assert not (tmp_path / "home" / ".config").exists()


def test_default_key_file_without_xdg_is_under_home(no_key, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/ignored")      # the XDG spec: relative paths are invalid
    CohortStore.create(tmp_path / "s.zarr")
    assert (tmp_path / "home" / ".config" / "petcohort" / "pseudonym.key").is_file()
    assert not no_key.exists()


def test_open_and_read_never_create_a_key(no_key, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_PSEUDONYM_KEY, KEY_A)
    _store_with_study(tmp_path / "s.zarr")
    monkeypatch.delenv(ENV_PSEUDONYM_KEY)
    store = CohortStore.open(tmp_path / "s.zarr", mode="r")
    assert store.study_keys() == [KEY]                             # reading needs no key
    with pytest.raises(StoreError) as exc:
        store.pseudonym("PAT-001")
    assert exc.value.reason == "NO_PSEUDONYM_KEY" and ENV_PSEUDONYM_KEY_FILE in exc.value.message
    assert not no_key.exists()


# -- refusals -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_key_file_readable_by_others_is_refused(tmp_path, monkeypatch, mode):
    path = _key_file(tmp_path / "site.key", KEY_A, mode)
    monkeypatch.delenv(ENV_PSEUDONYM_KEY)
    monkeypatch.setenv(ENV_PSEUDONYM_KEY_FILE, str(path))
    with pytest.raises(ConfigError) as exc:
        CohortStore.create(tmp_path / "s.zarr")
    assert exc.value.reason == "PSEUDONYM_KEY_PERMISSIONS"
    assert str(path) in exc.value.message and "chmod 600" in exc.value.message
    assert KEY_A not in exc.value.message
    assert not (tmp_path / "s.zarr" / "zarr.json").exists()


def test_default_key_file_readable_by_others_is_refused(no_key, tmp_path):
    no_key.parent.mkdir(parents=True)
    _key_file(no_key, KEY_A, 0o644)
    with pytest.raises(ConfigError) as exc:
        CohortStore.create(tmp_path / "s.zarr")
    assert exc.value.reason == "PSEUDONYM_KEY_PERMISSIONS" and str(no_key) in exc.value.message


def test_short_or_missing_key_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_PSEUDONYM_KEY)
    monkeypatch.setenv(ENV_PSEUDONYM_KEY_FILE, str(_key_file(tmp_path / "short.key", "fifteen-chars--")))
    with pytest.raises(ConfigError) as exc:
        CohortStore.create(tmp_path / "s.zarr")
    assert exc.value.reason == "PSEUDONYM_KEY_SHORT" and "fifteen" not in exc.value.message
    monkeypatch.setenv(ENV_PSEUDONYM_KEY_FILE, str(tmp_path / "absent.key"))
    with pytest.raises(ConfigError) as exc:
        CohortStore.create(tmp_path / "s.zarr")
    assert exc.value.reason == "PSEUDONYM_KEY_FILE_MISSING" and "absent.key" in exc.value.message


@pytest.mark.parametrize("source", ["env", "file"])
def test_other_key_is_refused_and_nothing_changes(tmp_path, monkeypatch, source):
    monkeypatch.setenv(ENV_PSEUDONYM_KEY, KEY_A)
    root = tmp_path / "s.zarr"
    _store_with_study(root).write_json("ingest_index", {"S-1": {"key": KEY}})
    before = _snapshot(root)
    if source == "env":
        monkeypatch.setenv(ENV_PSEUDONYM_KEY, KEY_B)
        named = f"environment variable {ENV_PSEUDONYM_KEY}"
    else:
        monkeypatch.delenv(ENV_PSEUDONYM_KEY)
        path = _key_file(tmp_path / "other.key", KEY_B)
        monkeypatch.setenv(ENV_PSEUDONYM_KEY_FILE, str(path))
        named = str(path)
    store = CohortStore.open(root, mode="r+")
    with pytest.raises(StoreError) as exc:
        store.pseudonym("PAT-001")
    assert exc.value.reason == "PSEUDONYM_KEY_MISMATCH"
    assert named in exc.value.message and ENV_PSEUDONYM_KEY_FILE in exc.value.message
    assert KEY_B not in exc.value.message and KEY_A not in exc.value.message
    with pytest.raises(StoreError):
        store.check_pseudonym_key()
    assert _snapshot(root) == before


def test_malformed_fingerprint_is_refused(tmp_path):
    root = tmp_path / "s.zarr"
    CohortStore.create(root)
    meta = json.loads((root / "zarr.json").read_text())
    meta["attributes"][FINGERPRINT_ATTR] = {"kdf": "md5"}
    (root / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError) as exc:
        CohortStore.open(root).pseudonym("PAT-001")
    assert exc.value.reason == "PSEUDONYM_KEY_MISMATCH" and "malformed" in exc.value.message


def test_store_made_from_environment_before_fingerprints_records_one(tmp_path, monkeypatch):
    root = tmp_path / "s.zarr"
    CohortStore.create(root)
    meta = json.loads((root / "zarr.json").read_text())
    del meta["attributes"][FINGERPRINT_ATTR]
    (root / "zarr.json").write_text(json.dumps(meta))
    CohortStore.open(root, mode="r").pseudonym("PAT-001")          # read-only: nothing recorded
    assert FINGERPRINT_ATTR not in _root_attrs(root)
    CohortStore.open(root, mode="r+").pseudonym("PAT-001")         # first use in r+: recorded
    assert FINGERPRINT_ATTR in _root_attrs(root)
    monkeypatch.setenv(ENV_PSEUDONYM_KEY, KEY_B)
    with pytest.raises(StoreError) as exc:
        CohortStore.open(root).pseudonym("PAT-001")
    assert exc.value.reason == "PSEUDONYM_KEY_MISMATCH"


def test_write_key_file_never_replaces_another_key(tmp_path):
    path = tmp_path / "k"
    assert write_key_file(path, KEY_A.encode()) is True and _mode(path) == 0o600
    assert write_key_file(path, KEY_A.encode()) is False          # same key: nothing to do
    with pytest.raises(ConfigError) as exc:
        write_key_file(path, KEY_B.encode())
    assert exc.value.reason == "PSEUDONYM_KEY_FILE_EXISTS" and read_key_file(path) == KEY_A.encode()
    assert [p.name for p in tmp_path.iterdir()] == ["k"]           # no temp file left


# -- legacy stores and `petcohort key export` ----------------------------------------------------
def test_legacy_store_keeps_working_with_a_warning(tmp_path, monkeypatch, caplog):
    root = _make_legacy(tmp_path / "old.zarr", monkeypatch)
    monkeypatch.setenv(ENV_PSEUDONYM_KEY, KEY_B)                   # the embedded key is the store's key
    caplog.set_level(logging.WARNING, logger="petcohort.storage.store")
    store = CohortStore.open(root, mode="r")
    assert store.pseudonym("PAT-001") == pseudonym("PAT-001", LEGACY_SECRET)
    warned = [r.getMessage() for r in caplog.records if "key export" in r.getMessage()]
    assert len(warned) == 1 and f"petcohort key export --store {root}" in warned[0]
    CohortStore.open(root, mode="r")
    assert len([r for r in caplog.records if "key export" in r.getMessage()]) == 2   # once per open


def _export(*args: str):
    from petcohort.pipelines.cli import app

    return CliRunner().invoke(app, ["key", "export", *args])


def test_key_export_moves_the_key_out(tmp_path, monkeypatch, caplog):
    root = _make_legacy(tmp_path / "old.zarr", monkeypatch)
    expected = CohortStore.open(root, mode="r").pseudonym("PAT-001")
    target = tmp_path / "keys" / "old.key"
    result = _export("--store", str(root), "--to", str(target))
    assert result.exit_code == 0, result.output
    assert f"{ENV_PSEUDONYM_KEY_FILE}={target}" in result.output   # not the configured key: say how to use it
    assert _mode(target) == 0o600 and read_key_file(target) == LEGACY_SECRET
    assert not (root / SECRET_KEY).exists() and FINGERPRINT_ATTR in _root_attrs(root)
    assert not (root / "lock.json").exists()
    monkeypatch.setenv(ENV_PSEUDONYM_KEY_FILE, str(target))
    caplog.set_level(logging.WARNING, logger="petcohort.storage.store")
    caplog.clear()
    assert CohortStore.open(root).pseudonym("PAT-001") == expected  # same pseudonyms as before the move
    assert not [r for r in caplog.records if "key export" in r.getMessage()]
    monkeypatch.setenv(ENV_PSEUDONYM_KEY, KEY_A)                   # another key is now refused
    with pytest.raises(StoreError) as exc:
        CohortStore.open(root).pseudonym("PAT-001")
    assert exc.value.reason == "PSEUDONYM_KEY_MISMATCH"
    again = _export("--store", str(root), "--to", str(target))
    assert again.exit_code == 2 and "NO_EMBEDDED_KEY" in again.output


def test_key_export_to_the_default_key_file(no_key, tmp_path, monkeypatch):
    root = _make_legacy(tmp_path / "old.zarr", monkeypatch)
    result = CohortStore.open(root).export_pseudonym_key()
    assert result == {"key_file": str(no_key), "created": True, "in_use": True}
    assert _mode(no_key) == 0o600 and _mode(no_key.parent) == 0o700
    assert CohortStore.open(root).pseudonym("PAT-001") == pseudonym("PAT-001", LEGACY_SECRET)


def test_key_export_never_overwrites_another_key_and_leaves_the_store(tmp_path, monkeypatch):
    root = _make_legacy(tmp_path / "old.zarr", monkeypatch)
    taken = _key_file(tmp_path / "taken.key", KEY_B)
    before = _snapshot(root)
    result = _export("--store", str(root), "--to", str(taken))
    assert result.exit_code == 2 and "PSEUDONYM_KEY_FILE_EXISTS" in result.output
    assert _snapshot(root) == before and read_key_file(taken) == KEY_B.encode()


def test_key_export_after_an_interrupted_export(tmp_path, monkeypatch):
    # the key file was written but the store still holds the key: the rerun finishes the move
    root = _make_legacy(tmp_path / "old.zarr", monkeypatch)
    target = tmp_path / "old.key"
    write_key_file(target, LEGACY_SECRET)
    result = CohortStore.open(root).export_pseudonym_key(target)
    assert result["created"] is False and not (root / SECRET_KEY).exists()


# -- the acceptance check: no key material and no identifier anywhere in a store --------------------
PATIENT_ID = "KEYTEST-PID-8675309"
PATIENT_NAME = "Quorbelline^Zyxwvut"
STUDY_UID = "1.2.826.0.1.3680043.99.8675309"


def _write_dicom_study(root: Path) -> None:
    from petcohort.storage.dicom_write import write_ct_series, write_pet_series

    t0 = dt.datetime(2024, 3, 5, 10, 0)
    pet = np.full((6, 6, 6), 1.0)
    pet[2:4, 2:4, 2:4] = 6.0
    patient = {"id": PATIENT_ID, "name": PATIENT_NAME, "weight_kg": 72.0, "height_m": 1.70, "sex": "M"}
    scan = {"acquisition_datetime": t0, "injection_datetime": t0 - dt.timedelta(minutes=60), "dose_bq": 3.0e8,
            "half_life_s": 6586.2, "frame_duration_s": 120.0, "study_uid": STUDY_UID}
    folder = root / f"{PATIENT_ID}_{PATIENT_NAME.replace('^', '_')}"   # exports often name folders so
    geometry = {"spacing": (4.0, 4.0, 4.0), "origin": (0.0, 0.0, 0.0)}
    write_pet_series(folder / "PET", pet, patient=patient, scan=scan, **geometry)
    write_ct_series(folder / "CT", np.zeros(pet.shape), patient=patient, scan=scan, **geometry)


def test_store_holds_no_key_and_no_identifier(no_key, tmp_path):
    from petcohort.engine.phantom.design import design_patient
    from petcohort.pipelines.ingest import ingest_tree
    from petcohort.pipelines.synthetic import synthesize

    root = tmp_path / "cohort.zarr"
    synthesize(root, patients=1, sites=1, seed=7, voxel_mm=10.0, fov_scale=0.4)   # the demo's first step
    _write_dicom_study(tmp_path / "dicom")
    report = ingest_tree(tmp_path / "dicom", root)
    assert report["ingested"] and not report["failed"], report
    key_text = no_key.read_text().strip()                           # made by synthesize: no set-up
    design = design_patient(7, 0, sites=1, scale=0.4)
    needles = {"key text": key_text, "key hex": key_text.encode().hex(),
               "key base64": base64.b64encode(key_text.encode()).decode(),
               "synthetic PatientID": design.source_id, "synthetic name": design.name,
               "PatientID": PATIENT_ID, "PatientName": PATIENT_NAME, "family name": "Quorbelline",
               "given name": "Zyxwvut", "StudyInstanceUID": STUDY_UID}
    files = [p for p in root.rglob("*") if p.is_file()]
    assert len(files) > 20 and not (root / SECRET_KEY).exists()
    for path in files:
        data = path.read_bytes()
        name = path.relative_to(root).as_posix()
        for what, needle in needles.items():
            assert needle.encode() not in data and needle not in name, f"{what} found in {name}"
