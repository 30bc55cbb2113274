"""The manifest frame and summary, derived from stage records only."""
from __future__ import annotations

import uuid

import numpy as np
import pytest

from petcohort.storage._backends import forget_memory_store
from petcohort.storage.manifest import MANIFEST_COLUMNS, manifest_frame, manifest_summary
from petcohort.storage.store import CohortStore


@pytest.fixture
def store():
    name = f"manifest-{uuid.uuid4().hex[:8]}"
    s = CohortStore.create(f"memory://{name}")
    yield s
    forget_memory_store(name)


def test_empty_manifest(store):
    frame = manifest_frame(store)
    assert list(frame.columns) == list(MANIFEST_COLUMNS) and len(frame) == 0
    summary = manifest_summary(store)
    assert len(summary) == 0 and {"committed", "failed", "total"} <= set(summary.columns)


def test_manifest_rows_and_summary(store):
    for key in ("P-00000000bb-T1", "P-00000000aa-T0", "odd-key"):
        store.add_study(key, {})
    store.commit_stage("P-00000000bb-T1", "threshold", arrays={"seg/t": np.zeros((2, 2, 2), np.uint8)},
                       record={"input_hash": "i1", "config_hash": "c1", "code_version": "0.1.0",
                               "seconds": 1.25, "started": "2026-11-30T00:00:00+00:00"})
    store.commit_stage("P-00000000aa-T0", "threshold", arrays={}, record={"seconds": 0.5})
    store.fail_stage("P-00000000aa-T0", "quantify", record={"reason": "SUV_MISSING_WEIGHT", "message": "no weight"})
    store.commit_stage("odd-key", "qc", arrays={}, record={})
    frame = manifest_frame(store)
    assert list(frame.columns) == list(MANIFEST_COLUMNS)
    assert list(zip(frame.study, frame.stage)) == [("P-00000000aa-T0", "quantify"), ("P-00000000aa-T0", "threshold"),
                                                   ("P-00000000bb-T1", "threshold"), ("odd-key", "qc")]
    row = frame.iloc[2]
    assert (row.patient, row.timepoint, row.status, row.input_hash, row.config_hash, row.code_version,
            row.seconds) == ("P-00000000bb", 1, "committed", "i1", "c1", "0.1.0", 1.25)
    failed = frame.iloc[0]
    assert (failed.status, failed.reason, failed.message) == ("failed", "SUV_MISSING_WEIGHT", "no weight")
    assert frame.patient.isna().iloc[3] and frame.timepoint.isna().iloc[3]
    summary = manifest_summary(store)
    assert summary.loc["threshold", "committed"] == 2 and summary.loc["threshold", "failed"] == 0
    assert summary.loc["quantify", "failed"] == 1 and summary.loc["qc", "total"] == 1
    assert int(summary["total"].sum()) == 4
