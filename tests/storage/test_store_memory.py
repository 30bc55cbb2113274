"""The cohort-store conformance suite on in-process ``memory://`` stores."""
from __future__ import annotations

import uuid

import numpy as np
import pytest
from store_conformance import KEY, StoreConformance

from petcohort.storage._backends import forget_memory_store
from petcohort.storage.store import CohortStore


class TestMemoryStore(StoreConformance):
    supports_subprocess = False   # a memory store is invisible to other processes

    @pytest.fixture
    def make_url(self):
        names = []

        def make() -> str:
            names.append(f"test-{uuid.uuid4().hex[:12]}")
            return f"memory://{names[-1]}"
        yield make
        for name in names:
            forget_memory_store(name)


def test_same_name_shares_data():
    name = f"shared-{uuid.uuid4().hex[:8]}"
    try:
        a = CohortStore.create(f"memory://{name}")
        a.add_study(KEY, {"timepoint": 0})
        a.write_arrays(KEY, {"pet": np.ones((2, 2, 2), np.float32)})
        b = CohortStore.open(f"memory://{name}", mode="r")
        assert b.study_keys() == [KEY]
        assert b.read_array(KEY, "pet").sum() == 8
        assert b.pseudonym("id-1") == a.pseudonym("id-1")
    finally:
        forget_memory_store(name)
