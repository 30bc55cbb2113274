"""The cohort-store conformance suite on local folders, plus SIGKILL-during-commit tests."""
from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from store_conformance import KEY, StoreConformance, _staged

from petcohort.engine.errors import StoreError
from petcohort.storage.store import CohortStore


class TestLocalStore(StoreConformance):
    @pytest.fixture
    def make_url(self, tmp_path):
        counter = itertools.count()
        return lambda: str(tmp_path / f"store{next(counter)}.zarr")


def test_not_empty_folder_is_refused_and_untouched(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(StoreError) as exc:
        CohortStore.create(tmp_path)
    assert exc.value.reason == "NOT_A_STORE"
    with pytest.raises(StoreError) as exc:
        CohortStore.open(tmp_path)
    assert exc.value.reason == "NOT_A_STORE"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_bad_key_never_touches_the_filesystem(tmp_path):
    store = CohortStore.create(tmp_path / "s")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    for bad in ("../../escape", "/abs", "..", "a\x00"):
        with pytest.raises(StoreError):
            store.add_study(bad, {})
        with pytest.raises(StoreError):
            store.commit_stage(KEY, bad, arrays={}, record={})
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


_WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from petcohort.storage.store import CohortStore
    store = CohortStore.open(sys.argv[1])
    i = 0
    while True:
        i += 1
        x = np.random.default_rng(i).random((64, 128, 128), dtype=np.float32)  # 4 MiB, 4 chunks
        store.commit_stage(sys.argv[2], "threshold", arrays={"seg/big": x, "qc/small": np.full(3, i, np.int32)},
                           record={"input_hash": str(i)})
        print(i, flush=True)
""")


@pytest.mark.parametrize("delay", [0.0, 0.02, 0.05, 0.1])
def test_sigkill_during_commits_leaves_a_consistent_store(tmp_path, delay):
    """Kill a writer at an arbitrary moment: any record present vouches for complete arrays."""
    store = CohortStore.create(tmp_path / "s")
    store.add_study(KEY, {})
    old = np.random.default_rng(0).random((64, 128, 128), dtype=np.float32)
    store.commit_stage(KEY, "threshold", arrays={"seg/big": old, "qc/small": np.zeros(3, np.int32)},
                       record={"input_hash": "0"})
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, store.url, KEY], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"1"   # one commit done: the writer is in its loop
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    again = CohortStore.open(store.url, mode="r")     # opens (read-only: nothing cleaned)
    rec = again.stage_record(KEY, "threshold")
    if rec is not None:
        i = int(rec["input_hash"])
        assert i >= 1
        want = old if i == 0 else np.random.default_rng(i).random((64, 128, 128), dtype=np.float32)
        np.testing.assert_array_equal(again.read_array(KEY, "seg/big"), want)
        np.testing.assert_array_equal(again.read_array(KEY, "qc/small"), np.full(3, i, np.int32))
    cleaned = CohortStore.open(store.url, mode="r+")  # unlocked r+: leftover staging removed
    assert not _staged(cleaned)
    assert cleaned.stage_record(KEY, "threshold") == rec


def test_codec_per_dtype_lz4_for_floats_zstd_for_the_rest(tmp_path):
    """Floats (every stage reads the PET) decode fastest with lz4; integer arrays stay smallest with zstd-3."""
    import zarr

    store = CohortStore.create(tmp_path / "c.zarr")
    store.add_study("P-1-T0", {"spacing": [4.0, 4.0, 4.0]})
    rng = np.random.default_rng(0)
    arrays = {"pet": rng.random((6, 5, 4)).astype(np.float32), "ct": rng.integers(-1000, 900, (6, 5, 4)).astype(np.int16),
              "seg/manual": (rng.random((6, 5, 4)) < 0.2).astype(np.uint8)}
    store.write_arrays("P-1-T0", arrays)
    for name, value in arrays.items():
        got = store.read_array("P-1-T0", name)
        assert got.dtype == value.dtype and np.array_equal(got, value)
        meta = zarr.open_array(store=str(tmp_path / "c.zarr" / "studies" / "P-1-T0" / name), mode="r").metadata
        blosc = [c for c in meta.codecs if type(c).__name__ == "BloscCodec"][0]
        assert blosc.cname.value == ("lz4" if value.dtype.kind == "f" else "zstd")
