"""Keys, pseudonyms and the PETCOHORT_PSEUDONYM_KEY(_FILE) settings (key files: test_key_file.py)."""
from __future__ import annotations

import uuid

import pytest

from petcohort.engine.errors import ConfigError, StoreError
from petcohort.storage._backends import forget_memory_store
from petcohort.storage.key_file import ENV_PSEUDONYM_KEY, ENV_PSEUDONYM_KEY_FILE, settings
from petcohort.storage.keys import pseudonym, split_study_key, study_key, validate_key, validate_name
from petcohort.storage.store import CohortStore


@pytest.mark.parametrize("good", ["P-3fa81c02d9-T0", "a", "A.b_c-9", "x" * 64, "seg"])
def test_valid_keys(good):
    assert validate_key(good) == good


@pytest.mark.parametrize("bad", ["", "/", "a/b", "a\\b", "..", ".", ".x", "a\x00", "a b", "ü", "x" * 65,
                                 "zarr.json", "P:1", "$HOME"])
def test_invalid_keys(bad):
    with pytest.raises(StoreError) as exc:
        validate_key(bad, what="study key")
    assert exc.value.reason == "BAD_KEY" and "study key" in exc.value.message


def test_invalid_types_and_names():
    with pytest.raises(StoreError):
        validate_key(None)
    assert validate_name("seg/manual") == "seg/manual"
    for bad in ("seg//x", "/pet", "pet/", "seg/../x", ""):
        with pytest.raises(StoreError) as exc:
            validate_name(bad)
        assert exc.value.reason == "BAD_KEY"


def test_pseudonym_is_keyed_hmac():
    secret = b"k" * 32
    # HMAC-SHA256(b"k"*32, b"PAT-001"), first 10 hex digits (computed with Python's hmac module)
    assert pseudonym("PAT-001", secret) == "P-26d0b9f179"
    assert pseudonym("PAT-001", secret) == pseudonym("PAT-001", bytearray(secret))
    assert pseudonym("PAT-001", b"j" * 32) != "P-26d0b9f179"
    assert pseudonym("PAT-002", secret) != "P-26d0b9f179"
    assert pseudonym("PAT-001", secret, prefix="S").startswith("S-")
    with pytest.raises(StoreError) as exc:
        pseudonym("PAT-001", b"short")
    assert exc.value.reason == "BAD_SECRET"
    with pytest.raises(StoreError):
        pseudonym("", secret)


def test_study_key_round_trip():
    assert study_key("P-3fa81c02d9", 0) == "P-3fa81c02d9-T0"
    assert split_study_key("P-3fa81c02d9-T12") == ("P-3fa81c02d9", 12)
    assert split_study_key("odd") == (None, None)
    for bad in (-1, 1.0, True):
        with pytest.raises(StoreError):
            study_key("P-3fa81c02d9", bad)
    with pytest.raises(StoreError):
        study_key("../P", 0)


def test_settings_reads_the_environment(tmp_path):
    assert settings({}).pseudonym_key is None and settings({}).key_file is None
    assert settings({ENV_PSEUDONYM_KEY: "a-long-enough-secret"}).pseudonym_key == b"a-long-enough-secret"
    assert "a-long-enough-secret" not in repr(settings({ENV_PSEUDONYM_KEY: "a-long-enough-secret"}))
    cfg = settings({ENV_PSEUDONYM_KEY_FILE: str(tmp_path / "k"), "HOME": str(tmp_path)})
    assert cfg.key_file == tmp_path / "k"
    assert cfg.default_file == tmp_path / ".config" / "petcohort" / "pseudonym.key"
    with pytest.raises(ConfigError) as exc:
        settings({ENV_PSEUDONYM_KEY: "short"})
    assert exc.value.reason == "PSEUDONYM_KEY_SHORT" and "short" not in exc.value.message.split(",")[-1]


def test_store_secret_from_environment(monkeypatch, tmp_path):
    names = [f"k-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    try:
        monkeypatch.setenv(ENV_PSEUDONYM_KEY, "shared-site-secret-0123")
        a, b = (CohortStore.create(f"memory://{n}") for n in names)
        assert a._backend.get("pseudonym.key") is None   # not stored: it comes from the environment
        assert a.pseudonym("PAT-001") == b.pseudonym("PAT-001") == pseudonym("PAT-001", b"shared-site-secret-0123")
        monkeypatch.delenv(ENV_PSEUDONYM_KEY)
        monkeypatch.setenv("HOME", str(tmp_path))   # no default key file there (and never the real one)
        monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
        with pytest.raises(StoreError) as exc:
            CohortStore.open(f"memory://{names[0]}").pseudonym("PAT-001")
        assert exc.value.reason == "NO_PSEUDONYM_KEY"
        assert not (tmp_path / ".config").exists()   # opening never creates a key
    finally:
        for n in names:
            forget_memory_store(n)
