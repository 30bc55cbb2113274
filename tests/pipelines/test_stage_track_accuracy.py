"""The ``track`` stage adds tracking accuracy when both studies hold ``truth/lesion_ids``."""
from __future__ import annotations

import uuid

import numpy as np
import pytest

from petcohort.pipelines.config import RunConfig
from petcohort.pipelines.stage_track import track_stage
from petcohort.pipelines.stages import StageContext
from petcohort.storage._backends import forget_memory_store
from petcohort.storage.store import CohortStore

BL, FU = "P-00000000dd-T0", "P-00000000dd-T1"
SHAPE = (10, 10, 30)


def _attrs(tp):
    return {"patient": "P-00000000dd", "timepoint": tp, "spacing": [4.0, 4.0, 4.0], "origin": [0.0, 0.0, 0.0]}


def _ids(boxes: dict[int, int]) -> np.ndarray:
    """Truth ids: lesion ``id`` is a 3x3x3 cube starting at x = ``boxes[id]``."""
    out = np.zeros(SHAPE, np.uint16)
    for lid, x in boxes.items():
        out[3:6, 3:6, x:x + 3] = lid
    return out


@pytest.fixture
def store():
    name = f"track-acc-{uuid.uuid4().hex[:10]}"
    s = CohortStore.create(f"memory://{name}")
    yield s
    forget_memory_store(name)


def _setup(store, bl_ids, fu_ids, *, truth=True):
    for key, tp, ids in ((BL, 0, bl_ids), (FU, 1, fu_ids)):
        store.add_study(key, _attrs(tp))
        arrays = {"pet": np.ones(SHAPE, np.float32), "seg/manual": (ids > 0).astype(np.uint8)}
        if truth:
            arrays["truth/lesion_ids"] = ids
        store.write_arrays(key, arrays)


def _track(store):
    ctx = StageContext(store=store, key=FU, attrs=store.study_attrs(FU), config=RunConfig(), baseline_key=BL)
    return track_stage(ctx).summary


def test_manual_masks_track_perfectly(store):
    # ids 7 and 3 persist (labels are numbered differently from the ids), 9 vanishes, 12 is new
    _setup(store, _ids({7: 1, 3: 8, 9: 15}), _ids({7: 1, 3: 9, 12: 24}))
    s = _track(store)
    assert "accuracy_reason" not in s
    acc = s["sources"]["manual"]["accuracy"]
    assert (acc["n_predicted"], acc["n_correct"], acc["n_true_persisting"]) == (2, 2, 2)
    assert (acc["precision"], acc["recall"], acc["f1"]) == (1.0, 1.0, 1.0)
    assert (acc["n_true_new"], acc["new_precision"], acc["new_recall"]) == (1, 1.0, 1.0)
    assert (acc["n_true_vanished"], acc["vanished_precision"], acc["vanished_recall"]) == (1, 1.0, 1.0)
    assert acc["status"] == "ok"


def test_followup_without_lesions_is_recorded(store):
    _setup(store, _ids({7: 1, 3: 8}), _ids({}))
    acc = _track(store)["sources"]["manual"]["accuracy"]
    assert acc["status"] == "no_followup_lesions" and acc["precision"] is None
    assert acc["n_called_vanished"] == 2 and acc["vanished_recall"] == 1.0


def test_without_truth_ids_the_reason_is_recorded(store):
    _setup(store, _ids({7: 1}), _ids({7: 1}), truth=False)
    s = _track(store)
    assert s["accuracy_reason"] == "NO_TRUTH_IDS" and "accuracy" not in s["sources"]["manual"]
