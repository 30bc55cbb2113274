"""One conformance suite that every cohort-store backend passes (zarr's testing/store.py idea).

Subclass :class:`StoreConformance` in a ``test_store_*.py`` module and
override the ``make_url`` fixture (a factory of fresh, not yet created store
URLs) and, if needed, ``storage_options`` and ``supports_subprocess``.
"""
from __future__ import annotations

import json
import logging
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from petcohort.engine.errors import StoreError
from petcohort.storage import _commit
from petcohort.storage.lock import LOCK_KEY
from petcohort.storage.manifest import manifest_frame
from petcohort.storage.store import FORMAT_VERSION, CohortStore

KEY = "P-3fa81c02d9-T0"
BAD_KEYS = ["", "/", "a/b", "a\\b", "..", "../x", ".hidden", "a\x00b", "a b", "é", "x" * 65, "zarr.json"]
DTYPES = ["float32", "int16", "uint8", "uint16", "float64", "int32", "bool"]


def _staged(store: CohortStore) -> list[str]:
    """Keys of staged commits (zarr also writes group docs _staging/zarr.json, _staging/<key>/zarr.json)."""
    return [k for k in store._backend.list_prefix(f"{_commit.STAGING}/") if k.count("/") >= 3]


def _arrays(draw_dtype: str) -> st.SearchStrategy:
    return hnp.arrays(np.dtype(draw_dtype), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=7))


class StoreConformance:
    """Behaviour shared by local, memory and fsspec cohort stores."""

    supports_subprocess = True
    round_trip_examples = 30   # hypothesis examples of the round-trip property (fewer over a network)

    @pytest.fixture
    def storage_options(self):
        return None

    @pytest.fixture
    def make_url(self):  # pragma: no cover - always overridden
        raise NotImplementedError("override make_url in the backend's test module")

    @pytest.fixture
    def make_store(self, make_url, storage_options):
        """Factory: a freshly created store with one study ``KEY``."""
        def make(with_study: bool = True) -> CohortStore:
            store = CohortStore.create(make_url(), storage_options=storage_options)
            if with_study:
                store.add_study(KEY, {"spacing": [3.0, 4.0, 4.0], "origin": [-100.0, 10.0, 20.0]})
            return store
        return make

    @pytest.fixture
    def reopen(self, storage_options):
        return lambda store, mode="r+": CohortStore.open(store.url, mode=mode, storage_options=storage_options)

    # -- arrays ---------------------------------------------------------------
    def test_round_trip_property(self, make_store):
        """read(write(x)) == x, dtype and shape kept, for random dtypes and shapes (0-3 dims, empty too)."""
        store = make_store()

        # Defined per call, not as a shared method: hypothesis refuses one
        # @given method run from several subclasses (differing_executors).
        @settings(max_examples=self.round_trip_examples, deadline=None)
        @given(data=st.data())
        def check(data):
            dtype = data.draw(st.sampled_from(DTYPES))
            x = data.draw(_arrays(dtype))
            store.write_arrays(KEY, {"rt/x": x})
            y = store.read_array(KEY, "rt/x")
            assert y.dtype == x.dtype and y.shape == x.shape
            np.testing.assert_array_equal(y, x)
            assert y.tobytes() == np.ascontiguousarray(x).tobytes()   # bit-exact: -0.0 and NaN payloads too

        check()

    def test_multi_chunk_round_trip_and_chunks(self, make_store, reopen):
        store = make_store()
        rng = np.random.default_rng(1)
        pet = rng.gamma(2.0, 0.5, size=(40, 64, 64)).astype(np.float32)   # 16 KiB planes -> 64 z/chunk
        ct = rng.integers(-1000, 1500, size=(70, 64, 64), dtype=np.int16)   # 8 KiB planes
        store.write_arrays(KEY, {"pet": pet, "ct": ct, "seg/manual": (pet > 2).astype(np.uint8)})
        again = reopen(store, "r")
        np.testing.assert_array_equal(again.read_array(KEY, "pet"), pet)
        np.testing.assert_array_equal(again.read_array(KEY, "ct"), ct)
        assert again.array_names(KEY) == ["ct", "pet", "seg/manual"]
        assert again.has_array(KEY, "seg/manual") and not again.has_array(KEY, "seg/none")
        # chunks are whole planes, >= 1 MiB unless the array is smaller
        assert _commit.chunks_for((250, 144, 144), 4) == (13, 144, 144)
        assert 13 * 144 * 144 * 4 >= 1 << 20 > 12 * 144 * 144 * 4
        assert _commit.chunks_for((5, 3, 3), 1) == (5, 3, 3)

    def test_missing_array_and_unknown_study(self, make_store):
        store = make_store()
        with pytest.raises(StoreError) as exc:
            store.read_array(KEY, "pet")
        assert exc.value.reason == "MISSING_ARRAY" and "pet" in exc.value.message and KEY in exc.value.message
        for call in (lambda: store.read_array("P-0000000000-T9", "pet"), lambda: store.study_attrs("P-0-T0"),
                     lambda: store.array_names("nope"), lambda: store.write_arrays("nope", {})):
            with pytest.raises(StoreError) as exc:
                call()
            assert exc.value.reason == "UNKNOWN_STUDY"

    def test_bad_arrays(self, make_store):
        store = make_store()
        store.write_arrays(KEY, {"pet": np.zeros(2, np.float32), "seg/manual": np.zeros(2, np.uint8)})
        for name in ("seg", "pet/x"):
            for call in (lambda: store.write_arrays(KEY, {name: np.zeros(2)}),
                         lambda: store.commit_stage(KEY, "qc", arrays={name: np.zeros(2)}, record={})):
                with pytest.raises(StoreError) as exc:
                    call()
                assert exc.value.reason == "ARRAY_NAME_CONFLICT"
        assert store.array_names(KEY) == ["pet", "seg/manual"]
        for bad in ([1, 2], np.array(["a"]), np.zeros(2, dtype=complex)):
            with pytest.raises(StoreError) as exc:
                store.write_arrays(KEY, {"pet": bad})
            assert exc.value.reason == "BAD_ARRAY"

    # -- studies and attrs ------------------------------------------------------
    def test_attrs_round_trip(self, make_store, reopen):
        store = make_store(with_study=False)
        attrs = {"patient": "P-3fa81c02d9", "timepoint": 0, "spacing": [3.0, 4.07, 4.07], "sex": "F",
                 "suv": {"bw_factor": 1.5e-4, "overrides": {}, "units": "BQML"}, "sul_per_suvbw": None,
                 "truth": {"lesions": [{"id": 1, "centre_mm": [1.5, 2.0, -3.25]}]}, "site": "Zürich"}
        store.add_study(KEY, attrs)
        store.add_study("P-0000000001-T1", {"timepoint": 1})
        assert reopen(store, "r").study_attrs(KEY) == attrs
        store.update_study_attrs(KEY, {"sex": "M", "weight_kg": 70.5})
        assert store.study_attrs(KEY) == {**attrs, "sex": "M", "weight_kg": 70.5}
        assert store.study_keys() == ["P-0000000001-T1", KEY]
        with pytest.raises(StoreError) as exc:
            store.add_study(KEY, {})
        assert exc.value.reason == "STUDY_EXISTS"
        with pytest.raises(StoreError) as exc:
            store.add_study("P-x-T0", {"bad": float("nan")})
        assert exc.value.reason == "BAD_JSON"

    @pytest.mark.parametrize("bad", BAD_KEYS)
    def test_key_validation(self, make_store, bad):
        store = make_store()
        calls = [lambda: store.add_study(bad, {}), lambda: store.study_attrs(bad),
                 lambda: store.commit_stage(KEY, bad, arrays={}, record={}),
                 lambda: store.stage_record(bad, "qc")]
        if bad != "a/b":  # "/" separates the parts of an array name
            calls.append(lambda: store.write_arrays(KEY, {bad: np.zeros(2)}))
        for call in calls:
            with pytest.raises(StoreError) as exc:
                call()
            assert exc.value.reason == "BAD_KEY"
        assert store.study_keys() == [KEY]

    # -- stage commits ------------------------------------------------------------
    def test_commit_and_replace(self, make_store, reopen):
        store = make_store()
        pet = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
        store.write_arrays(KEY, {"pet": pet})
        store.commit_stage(KEY, "organs", arrays={"organs/bone": np.ones((3, 4, 5), np.uint8)}, record={})
        v1 = {"seg/threshold_fixed": (pet > 10).astype(np.uint8), "qc/mip_pet": pet.max(axis=1)}
        store.commit_stage(KEY, "threshold", arrays=v1,
                           record={"input_hash": "a", "config_hash": "c", "code_version": "0.1", "seconds": 0.5,
                                   "started": "2026-01-01T00:00:00", "summary": {"n": 1}})
        rec = store.stage_record(KEY, "threshold")
        assert rec["status"] == "committed" and rec["arrays"] == ["qc/mip_pet", "seg/threshold_fixed"]
        assert rec["stage"] == "threshold" and rec["reason"] is None and rec["summary"] == {"n": 1}
        np.testing.assert_array_equal(store.read_array(KEY, "qc/mip_pet"), pet.max(axis=1))
        # replace: the new commit drops the array it no longer writes
        v2 = {"seg/threshold_fixed": (pet > 30).astype(np.uint8)}
        store.commit_stage(KEY, "threshold", arrays=v2, record={"input_hash": "b"})
        again = reopen(store, "r")
        assert again.stage_record(KEY, "threshold")["input_hash"] == "b"
        np.testing.assert_array_equal(again.read_array(KEY, "seg/threshold_fixed"), v2["seg/threshold_fixed"])
        assert again.array_names(KEY) == ["organs/bone", "pet", "seg/threshold_fixed"]
        assert set(again.stage_records()) == {(KEY, "organs"), (KEY, "threshold")}
        assert not _staged(store)

    def test_failed_records(self, make_store):
        store = make_store()
        store.commit_stage(KEY, "quantify", arrays={"q/x": np.ones(3, np.float32)}, record={})
        store.fail_stage(KEY, "quantify", record={"reason": "SUV_MISSING_WEIGHT", "message": "no weight",
                                                  "seconds": 0.1})
        rec = store.stage_record(KEY, "quantify")
        assert rec["status"] == "failed" and rec["reason"] == "SUV_MISSING_WEIGHT" and rec["arrays"] == []
        assert not store.has_array(KEY, "q/x")
        with pytest.raises(StoreError) as exc:
            store.fail_stage(KEY, "qc", record={"message": "no reason"})
        assert exc.value.reason == "BAD_RECORD"
        assert store.stage_records() == {(KEY, "quantify"): rec}
        frame = manifest_frame(store)
        assert frame.loc[0, "status"] == "failed" and frame.loc[0, "patient"] == "P-3fa81c02d9"

    def test_interrupted_commit_in_process(self, make_store, reopen):
        store = make_store()
        old = np.full((4, 4, 4), 7, np.uint8)

        class Killed(BaseException):
            pass

        for target, expect_old in (("staged", True), ("unrecorded", False), ("moved", False)):
            store.commit_stage(KEY, "threshold", arrays={"seg/t": old}, record={"input_hash": "old"})
            rec = store.stage_record(KEY, "threshold")

            def hook(step, target=target):
                if step == target:
                    raise Killed(step)
            with pytest.raises(Killed):
                _commit.commit(store._backend, KEY, "threshold", {"seg/t": old + 1}, {**rec, "input_hash": "new"},
                               hook=hook)
            again = reopen(store, "r+")  # unlocked: cleans staging
            rec = again.stage_record(KEY, "threshold")
            assert (rec is not None) == expect_old, target
            if expect_old:
                assert rec["input_hash"] == "old"
                np.testing.assert_array_equal(again.read_array(KEY, "seg/t"), old)
            assert not _staged(again)

    def test_killed_commit_subprocess(self, make_store, reopen, storage_options):
        if not self.supports_subprocess:
            pytest.skip("store lives in this process only")
        store = make_store()
        old = np.full((6, 32, 32), 3, np.int16)
        store.commit_stage(KEY, "qc", arrays={"qc/a": old}, record={"input_hash": "old"})
        script = textwrap.dedent("""
            import json, os, signal, sys
            import numpy as np
            from petcohort.storage import _commit
            from petcohort.storage.store import CohortStore
            url, opts, key = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
            store = CohortStore.open(url, storage_options=opts)
            def hook(step):
                if step == "staged":
                    os.kill(os.getpid(), signal.SIGKILL)
            rec = dict(store.stage_record(key, "qc"), input_hash="new")
            _commit.commit(store._backend, key, "qc", {"qc/a": np.zeros((6, 32, 32), np.int16)}, rec, hook=hook)
        """)
        proc = subprocess.run([sys.executable, "-c", script, store.url, json.dumps(storage_options), KEY],
                              capture_output=True, timeout=120)
        assert proc.returncode == -9, proc.stderr.decode()[-2000:]
        assert _staged(store)   # the killed commit left staging
        again = reopen(store, "r+")
        assert again.stage_record(KEY, "qc")["input_hash"] == "old"
        np.testing.assert_array_equal(again.read_array(KEY, "qc/a"), old)
        assert not _staged(again)

    # -- store-level ----------------------------------------------------------------
    def test_format_version_and_exists(self, make_store, reopen, storage_options):
        store = make_store(with_study=False)
        with pytest.raises(StoreError) as exc:
            CohortStore.create(store.url, storage_options=storage_options)
        assert exc.value.reason == "STORE_EXISTS"
        assert CohortStore.create(store.url, exist_ok=True, storage_options=storage_options).url == store.url
        root = {"zarr_format": 3, "node_type": "group",
                "attributes": {"petcohort_format": FORMAT_VERSION + 1, "kind": "petcohort-cohort-store"}}
        store._backend.put("zarr.json", json.dumps(root).encode())
        store._backend.put(f"{_commit.STAGING}/x/y-1/k", b"left over")
        before = sorted(store._backend.list_prefix(""))
        for call in (lambda: reopen(store, "r+"), lambda: reopen(store, "r"),
                     lambda: CohortStore.create(store.url, exist_ok=True, storage_options=storage_options)):
            with pytest.raises(StoreError) as exc:
                call()
            assert exc.value.reason == "STORE_FORMAT_NEWER"
        assert sorted(store._backend.list_prefix("")) == before   # nothing written or cleaned

    def test_not_a_store(self, make_url, storage_options):
        url = make_url()
        with pytest.raises(StoreError) as exc:
            CohortStore.open(url, storage_options=storage_options)
        assert exc.value.reason == "NOT_A_STORE"

    def test_read_only(self, make_store, reopen):
        ro = reopen(make_store(), "r")
        calls = [lambda: ro.add_study("P-1-T1", {}), lambda: ro.write_arrays(KEY, {"pet": np.zeros(2)}),
                 lambda: ro.update_study_attrs(KEY, {"a": 1}), lambda: ro.write_json("summary", {}),
                 lambda: ro.commit_stage(KEY, "qc", arrays={}, record={}),
                 lambda: ro.fail_stage(KEY, "qc", record={"reason": "X"}), lambda: ro.lock("me")]
        for call in calls:
            with pytest.raises(StoreError) as exc:
                call()
            assert exc.value.reason == "STORE_READ_ONLY"
        assert ro.stage_records() == {} and ro.read_json("summary") is None

    def test_json_and_pseudonym(self, make_store, reopen):
        store = make_store()
        store.write_json("run_summary", {"failed": 0, "stages": ["qc"]})
        assert reopen(store, "r").read_json("run_summary") == {"failed": 0, "stages": ["qc"]}
        assert store.read_json("absent") is None
        p = store.pseudonym("PatientID-12345")
        assert p.startswith("P-") and len(p) == 12 and p == reopen(store, "r").pseudonym("PatientID-12345")
        assert p == make_store().pseudonym("PatientID-12345")   # one key outside the stores: one key space
        assert store._backend.get("pseudonym.key") is None       # the store holds no key material

    def test_pickle_reopens(self, make_store):
        store = make_store()
        store.write_arrays(KEY, {"pet": np.arange(8, dtype=np.float32).reshape(2, 2, 2)})
        store._backend.put(f"{_commit.STAGING}/{KEY}/qc-1/k", b"in flight elsewhere")
        clone = pickle.loads(pickle.dumps(store))
        assert clone.url == store.url and clone.mode == store.mode
        np.testing.assert_array_equal(clone.read_array(KEY, "pet"), store.read_array(KEY, "pet"))
        assert _staged(clone)   # unpickling never cleans: another worker may be committing
        assert clone.pseudonym("x") == store.pseudonym("x")

    def test_to_xarray(self, make_store):
        store = make_store()
        pet = np.random.default_rng(0).random((4, 3, 2)).astype(np.float32)
        store.write_arrays(KEY, {"pet": pet, "seg/manual": (pet > 0.5).astype(np.uint8), "qc/mip": pet.max(axis=1)})
        ds = store.to_xarray(KEY)
        assert ds["pet"].dims == ("z", "y", "x") and ds["seg/manual"].dims == ("z", "y", "x")
        np.testing.assert_allclose(ds["z"].values, [-100, -97, -94, -91])
        np.testing.assert_allclose(ds["x"].values, [20, 24])
        np.testing.assert_array_equal(ds["pet"].values, pet)
        assert ds.attrs["spacing"] == [3.0, 4.0, 4.0] and ds["qc/mip"].shape == (4, 2)

    def test_lock(self, make_store, reopen, caplog):
        store = make_store()
        with store.lock("petcohort run"):
            with pytest.raises(StoreError) as exc:
                with reopen(store).lock("second run"):
                    pass
            assert exc.value.reason == "STORE_LOCKED" and "petcohort run" in exc.value.message
        with store.lock("again"):   # released on exit
            pass
        import socket
        dead = {"owner": "crashed run", "pid": 2 ** 22 + 12345, "hostname": socket.gethostname(),
                "time": "2026-01-01T00:00:00+00:00", "token": "x"}
        store._backend.put(LOCK_KEY, json.dumps(dead).encode())
        store._backend.put(f"{_commit.STAGING}/{KEY}/qc-1/k", b"left over")
        with caplog.at_level(logging.WARNING, logger="petcohort.storage.lock"):
            with store.lock("new run") as held:
                assert json.loads(store._backend.get(LOCK_KEY))["token"] == held.info["token"]
                assert not _staged(store)
        assert "stale" in caplog.text
        other_host = dict(dead, hostname="elsewhere-host", pid=1)
        store._backend.put(LOCK_KEY, json.dumps(other_host).encode())
        with pytest.raises(StoreError) as exc:
            store.lock("third").acquire()
        assert exc.value.reason == "STORE_LOCKED" and "elsewhere-host" in exc.value.message
