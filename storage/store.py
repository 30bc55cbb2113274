"""The cohort store: one Zarr v3 group holding every study, its arrays and stage records.

Layout, chunking, codec and the commit protocol are documented in
:mod:`petcohort.storage._commit`; byte access per backend (local folder,
``memory://NAME``, fsspec URLs such as ``s3://bucket/prefix``) in
:mod:`petcohort.storage._backends`; the writer lock in
:mod:`petcohort.storage.lock`; keys and pseudonyms in :mod:`petcohort.storage.keys`;
the pseudonym key in :mod:`petcohort.storage.key_file` (its checks on a store:
:mod:`petcohort.storage._store_key`).

The pseudonym key lives outside the store; the root attributes keep only
its fingerprint (``pseudonym_key_fingerprint``), so a store refuses another
key (``PSEUDONYM_KEY_MISMATCH``) before pseudonymising anything. Stores made
before that keep their key in ``pseudonym.key`` at the root: they still
work, warn on every open, and :meth:`CohortStore.export_pseudonym_key`
(``petcohort key export``) moves the key out.

Examples
--------
>>> store = CohortStore.create("memory://doc")          # doctest: +SKIP
>>> store.add_study("P-3fa81c02d9-T0", {"spacing": [3, 4, 4], "origin": [0, 0, 0]})
>>> store.write_arrays("P-3fa81c02d9-T0", {"pet": pet})
"""
from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from petcohort.engine.errors import StoreError
from petcohort.storage import _commit
from petcohort.storage._backends import Backend, open_backend, zarr_group
from petcohort.storage._store_key import FINGERPRINT_ATTR, SECRET_KEY, PseudonymKeyMixin
from petcohort.storage.key_file import PseudonymKey, key_fingerprint, resolve_key
from petcohort.storage.keys import validate_key, validate_name
from petcohort.storage.lock import LOCK_KEY, StoreLock

if TYPE_CHECKING:
    import xarray

__all__ = ["FORMAT_VERSION", "STORE_KIND", "CohortStore"]

FORMAT_VERSION: int = 1
STORE_KIND = "petcohort-cohort-store"
log = logging.getLogger(__name__)

_RECORD_DEFAULTS: dict[str, Any] = {
    "input_hash": None, "config_hash": None, "code_version": None, "reason": None, "message": "",
    "started": None, "seconds": None, "worker": None, "summary": {},
}


def _json_bytes(obj: Any, what: str) -> bytes:
    try:
        return json.dumps(obj, sort_keys=True, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise StoreError("BAD_JSON", f"{what} must be JSON-serialisable without NaN/inf: {exc}") from exc


def _study_key(key: str) -> str:
    return validate_key(key, what="study key")


def _root_meta(backend: Backend) -> dict[str, Any] | None:
    raw = backend.get("zarr.json")
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
    except ValueError:
        return None
    return meta if isinstance(meta, dict) else None


def _check_format(meta: dict[str, Any] | None, url: str) -> None:
    attrs = (meta or {}).get("attributes") or {}
    if meta is None or meta.get("node_type") != "group" or attrs.get("kind") != STORE_KIND:
        raise StoreError("NOT_A_STORE", f"{url!r} is not a petcohort cohort store "
                                        f"(expected a Zarr v3 group with kind={STORE_KIND!r})")
    version = attrs.get("petcohort_format")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise StoreError("STORE_FORMAT_NEWER", f"store {url!r} has petcohort_format={version!r}; this "
                                               f"petcohort reads <= {FORMAT_VERSION}: upgrade petcohort")


def _reopen(url: str, mode: str, storage_options: dict[str, Any] | None) -> "CohortStore":
    return CohortStore._open_quietly(url, mode, storage_options)


class CohortStore(PseudonymKeyMixin):
    """A cohort of PET/CT studies in one Zarr v3 group. Use :meth:`create` or :meth:`open`.

    Attributes
    ----------
    url : str
        Where the store lives (absolute path for local stores).
    mode : str
        ``"r"`` (read-only) or ``"r+"``.
    """

    def __init__(self, backend: Backend, mode: str, embedded: bytes | None = None,
                 fingerprint: dict | None = None) -> None:
        self._backend = backend
        self.mode = mode
        self._embedded = embedded          # legacy stores: the key in SECRET_KEY
        self._fingerprint = fingerprint    # root attribute FINGERPRINT_ATTR, or None
        self._key: PseudonymKey | None = None   # resolved and checked on first use

    @property
    def url(self) -> str:
        return self._backend.url

    def __repr__(self) -> str:
        return f"CohortStore({self.url!r}, mode={self.mode!r})"

    def __reduce__(self):
        # Dask ships stores to workers by pickling: reopen by URL there (the
        # key is not pickled, and memory:// stores stay shared in-process).
        return (_reopen, (self.url, self.mode, self._backend.storage_options))

    # -- opening ------------------------------------------------------------
    @classmethod
    def create(cls, url: str | os.PathLike, *, exist_ok: bool = False,
               storage_options: dict[str, Any] | None = None) -> "CohortStore":
        """Create an empty store (root group, format attrs, fingerprint of the pseudonym key).

        The key comes from :func:`petcohort.storage.key_file.resolve_key`; the
        default key file is created when no key is configured.

        Raises
        ------
        StoreError
            ``STORE_EXISTS`` when a store is there and not ``exist_ok``;
            ``NOT_A_STORE`` when the location holds something else.
        ConfigError
            Pseudonym key problems (``PSEUDONYM_KEY_PERMISSIONS``,
            ``PSEUDONYM_KEY_SHORT``, ...); nothing is written but an empty
            folder.
        """
        try:
            backend = open_backend(url, read_only=False, create=True, storage_options=storage_options)
            meta = _root_meta(backend)
        except OSError as exc:
            raise StoreError("STORE_UNREACHABLE", f"cannot create store at {os.fspath(url)!r}: {exc}") from exc
        if meta is not None:
            _check_format(meta, backend.url)
            if not exist_ok:
                raise StoreError("STORE_EXISTS", f"a cohort store already exists at {backend.url!r}; "
                                                 "pass exist_ok=True to open it")
            return cls.open(url, mode="r+", storage_options=storage_options)
        if backend.list_dir(""):
            raise StoreError("NOT_A_STORE", f"{backend.url!r} is not empty and not a cohort store; "
                                            "choose an empty or new location")
        key = resolve_key(create=True)
        # The root group metadata (Zarr v3 spec, "group metadata") is written
        # last and in one PUT: a half-created store is "not a store".
        root = {"zarr_format": 3, "node_type": "group",
                "attributes": {"petcohort_format": FORMAT_VERSION, "kind": STORE_KIND,
                               FINGERPRINT_ATTR: key_fingerprint(key.secret)}}
        backend.put("zarr.json", _json_bytes(root, "root metadata"))
        log.info("created cohort store %s", backend.url)
        store = cls.open(url, mode="r+", storage_options=storage_options)
        store._key = key   # checked by construction: no second read of the key
        return store

    @classmethod
    def open(cls, url: str | os.PathLike, *, mode: str = "r+",
             storage_options: dict[str, Any] | None = None) -> "CohortStore":
        """Open an existing store; in mode ``r+`` leftover staging is removed when unlocked.

        Raises
        ------
        StoreError
            ``NOT_A_STORE``, ``STORE_FORMAT_NEWER`` (nothing is written),
            ``BAD_MODE``, ``STORE_UNREACHABLE``.
        """
        store = cls._open_quietly(url, mode, storage_options)
        if store._embedded is not None:
            log.warning("store %s keeps its pseudonym key inside (%s): whoever holds a copy can test patient IDs "
                        "against it; move it out with `petcohort key export --store %s`",
                        store.url, SECRET_KEY, store.url)
        # With no writer run active nothing can be staging, so leftovers are
        # from a killed process. Workers of a locked run skip this.
        if mode == "r+" and store._backend.get(LOCK_KEY) is None:
            store.cleanup_staging()
        return store

    @classmethod
    def _open_quietly(cls, url: str | os.PathLike, mode: str,
                      storage_options: dict[str, Any] | None) -> "CohortStore":
        """Open without cleaning staging (unpickling on workers: a commit may be in flight)."""
        if mode not in ("r", "r+"):
            raise StoreError("BAD_MODE", f"mode must be 'r' or 'r+', got {mode!r}")
        try:
            backend = open_backend(url, read_only=(mode == "r"), create=False, storage_options=storage_options)
            meta = _root_meta(backend)
        except OSError as exc:  # unreachable endpoint, permissions, ...
            raise StoreError("STORE_UNREACHABLE", f"cannot read store {os.fspath(url)!r}: {exc}") from exc
        _check_format(meta, backend.url)
        fingerprint = ((meta or {}).get("attributes") or {}).get(FINGERPRINT_ATTR)
        return cls(backend, mode, backend.get(SECRET_KEY), fingerprint)

    # -- helpers ------------------------------------------------------------
    def _writable(self, action: str) -> None:
        if self.mode != "r+":
            raise StoreError("STORE_READ_ONLY", f"cannot {action}: store {self.url!r} is open read-only (mode 'r')")

    def _study(self, key: str) -> str:
        _study_key(key)
        if self._backend.get(f"{_commit.study_prefix(key)}/zarr.json") is None:
            raise StoreError("UNKNOWN_STUDY", f"study {key!r} is not in store {self.url!r}")
        return key

    def _put_root_attrs(self, attrs: dict[str, Any]) -> None:
        """Add ``attrs`` to the root group attributes (one atomic PUT of zarr.json)."""
        meta = _root_meta(self._backend) or {}
        meta["attributes"] = {**(meta.get("attributes") or {}), **attrs}
        self._backend.put("zarr.json", _json_bytes(meta, "root metadata"))

    def cleanup_staging(self) -> None:
        """Remove staging left by killed commits (and temp files of killed record writes)."""
        self._writable("clean up staging")
        self._backend.delete_prefix(f"{_commit.STAGING}/")
        for k in self._backend.list_prefix(f"{_commit.RECORDS}/"):
            if k.rsplit("/", 1)[-1].startswith("."):
                self._backend.delete(k)

    # -- studies ------------------------------------------------------------
    def study_keys(self) -> list[str]:
        """Keys of all studies, sorted."""
        # studies/ is itself a zarr group: skip its own zarr.json.
        return sorted(k for k in self._backend.list_dir(f"{_commit.STUDIES}/")
                      if k != "zarr.json" and not k.startswith("."))

    def add_study(self, key: str, attrs: dict) -> None:
        """Create study ``key`` with JSON ``attrs``. StoreError ``STUDY_EXISTS`` if present."""
        self._writable("add a study")
        _study_key(key)
        _json_bytes(attrs, f"attrs of study {key!r}")
        path = _commit.study_prefix(key)
        if self._backend.get(f"{path}/zarr.json") is not None:
            raise StoreError("STUDY_EXISTS", f"study {key!r} already exists in {self.url!r}")
        zarr_group(self._backend, path, mode="w-").attrs.update(dict(attrs))

    def study_attrs(self, key: str) -> dict:
        """Attributes of study ``key`` (a fresh dict)."""
        self._study(key)
        meta = json.loads(self._backend.get(f"{_commit.study_prefix(key)}/zarr.json"))
        return dict(meta.get("attributes") or {})

    def update_study_attrs(self, key: str, attrs: dict) -> None:
        """Shallow-merge ``attrs`` into the study attributes."""
        self._writable("update study attrs")
        self._study(key)
        _json_bytes(attrs, f"attrs of study {key!r}")
        zarr_group(self._backend, _commit.study_prefix(key), mode="r+").attrs.update(dict(attrs))

    def array_names(self, key: str) -> list[str]:
        """Names of the study's arrays, sorted (``["ct", "organs/bone", "pet", "seg/manual"]``).

        Walks the study's folders level by level and stops at each array: the
        chunk files inside arrays (most of a study's keys) are never listed.
        """
        self._study(key)
        base = f"{_commit.study_prefix(key)}/"
        names: list[str] = []
        level = [base + child + "/" for child in self._backend.list_dir(base.rstrip("/")) if child != "zarr.json"]
        while level:
            metas = self._backend.get_many([f"{p}zarr.json" for p in level])
            deeper = []
            for p in level:
                raw = metas.get(f"{p}zarr.json")
                if raw is not None and json.loads(raw).get("node_type") == "array":
                    names.append(p[len(base):-1])
                    continue
                # a group (or a folder without metadata): look inside
                deeper.extend(p + child + "/" for child in self._backend.list_dir(p.rstrip("/"))
                              if child != "zarr.json")
            level = deeper
        return sorted(names)

    def has_array(self, key: str, name: str) -> bool:
        """Whether study ``key`` has array ``name``."""
        self._study(key)
        validate_name(name)
        raw = self._backend.get(f"{_commit.study_prefix(key)}/{name}/zarr.json")
        return raw is not None and json.loads(raw).get("node_type") == "array"

    def read_array(self, key: str, name: str) -> np.ndarray:
        """The whole array ``name`` of study ``key``, dtype and shape as written.

        Raises
        ------
        StoreError
            ``UNKNOWN_STUDY``; ``MISSING_ARRAY`` naming the array and study.
        """
        if not self.has_array(key, name):
            raise StoreError("MISSING_ARRAY", f"study {key!r} has no array {name!r} "
                                              f"(has: {', '.join(self.array_names(key)) or 'none'})")
        return _commit.read_array(self._backend, f"{_commit.study_prefix(key)}/{name}")

    def write_arrays(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        """Write arrays directly into the study (ingest/synth only; stages use commit_stage)."""
        self._writable("write arrays")
        self._study(key)
        checked = {name: _commit.check_array(name, a) for name, a in arrays.items()}
        base = _commit.study_prefix(key)
        for name in checked:
            _commit.check_slot(self._backend, base, name)
        for name, value in checked.items():
            _commit.ensure_groups(self._backend, base, name)
            _commit.write_array(self._backend, f"{base}/{name}", value)

    # -- stages ---------------------------------------------------------------
    def commit_stage(self, key: str, stage: str, *, arrays: dict[str, np.ndarray], record: dict) -> None:
        """Atomically replace the outputs and record of (key, stage).

        The record gets ``stage``, ``status="committed"`` and ``arrays`` (the
        sorted names) set here; fields of the contract not given default to
        None (``message`` to "" and ``summary`` to {}).
        """
        self._writable("commit a stage")
        self._study(key)
        validate_key(stage, what="stage name")
        checked = {name: _commit.check_array(name, a) for name, a in arrays.items()}
        for name in checked:
            _commit.check_slot(self._backend, _commit.study_prefix(key), name)
        full = {**_RECORD_DEFAULTS, **dict(record), "stage": stage, "status": "committed",
                "arrays": sorted(checked)}
        _json_bytes(full, f"record of stage {stage!r}")
        _commit.commit(self._backend, key, stage, checked, full)

    def fail_stage(self, key: str, stage: str, *, record: dict) -> None:
        """Record that (key, stage) failed (``record["reason"]`` is the code); removes its old arrays."""
        self._writable("record a failed stage")
        self._study(key)
        validate_key(stage, what="stage name")
        reason = record.get("reason")
        if not (isinstance(reason, str) and reason and reason.replace("_", "").isalnum() and reason.upper() == reason):
            raise StoreError("BAD_RECORD", f"failed record of stage {stage!r} needs reason = an UPPER_SNAKE "
                                           f"code, got {reason!r}")
        full = {**_RECORD_DEFAULTS, **dict(record), "stage": stage, "status": "failed", "arrays": []}
        _json_bytes(full, f"record of stage {stage!r}")
        _commit.fail(self._backend, key, stage, full)

    def stage_record(self, key: str, stage: str) -> dict | None:
        """The record of (key, stage), or None when not committed/failed."""
        validate_key(key, what="study key")
        validate_key(stage, what="stage name")
        raw = self._backend.get(_commit.record_key(key, stage))
        return None if raw is None else json.loads(raw)

    def stage_records(self) -> dict[tuple[str, str], dict]:
        """All stage records, keyed by (study key, stage); one listing plus concurrent reads."""
        wanted = {}
        for k in self._backend.list_prefix(f"{_commit.RECORDS}/"):
            parts = k.split("/")
            if len(parts) == 3 and parts[2].endswith(".json") and not parts[2].startswith("."):
                wanted[k] = (parts[1], parts[2][: -len(".json")])
        found = self._backend.get_many(sorted(wanted))
        return {wanted[k]: json.loads(raw) for k, raw in found.items()}

    # -- cohort-level ---------------------------------------------------------
    def _json_key(self, name: str) -> str:
        validate_key(name, what="JSON name")
        return f"cohort/{name}" if name.endswith(".json") else f"cohort/{name}.json"

    def write_json(self, name: str, obj: Any) -> None:
        """Write a cohort-level JSON document (atomically replaced)."""
        self._writable("write JSON")
        self._backend.put(self._json_key(name), _json_bytes(obj, f"JSON {name!r}"))

    def read_json(self, name: str) -> object | None:
        """A cohort-level JSON document, or None when absent."""
        raw = self._backend.get(self._json_key(name))
        return None if raw is None else json.loads(raw)

    def lock(self, owner: str) -> StoreLock:
        """Context manager: hold the writer lock (StoreError ``STORE_LOCKED`` if held)."""
        self._writable("lock the store")
        return StoreLock(self._backend, owner, on_acquire=self.cleanup_staging)

    def to_xarray(self, key: str) -> "xarray.Dataset":
        """The study as a lazy xarray Dataset (see :func:`petcohort.storage._xarray.study_dataset`)."""
        from petcohort.storage._xarray import study_dataset

        attrs = self.study_attrs(key)
        paths = {n: f"{_commit.study_prefix(key)}/{n}" for n in self.array_names(key)}
        return study_dataset(self._backend, paths, attrs)
