"""Tracking accuracy against known lesion ids, on hand-made 1-D volumes with hand-counted answers."""
from __future__ import annotations

import numpy as np
import pytest

from petcohort.engine.errors import InputError
from petcohort.engine.stats.tracking import Match, match_lesions
from petcohort.engine.stats.tracking_accuracy import (ACCURACY_COUNTS, lesion_truth_ids, pool_accuracy,
                                                      tracking_accuracy)

SHAPE = (1, 1, 30)


def vol(runs: dict[int, tuple[int, int]]) -> np.ndarray:
    """A (1, 1, 30) label volume: ``{value: (x0, x1)}`` fills x0..x1-1."""
    out = np.zeros(SHAPE, np.uint16)
    for value, (a, b) in runs.items():
        out[0, 0, a:b] = value
    return out


# truth: 1 and 2 persist, 3 vanishes, 4 is new, 5 persists
BL_TRUTH = vol({1: (0, 4), 2: (6, 9), 3: (12, 14), 5: (20, 23)})
FU_TRUTH = vol({1: (0, 4), 2: (6, 9), 4: (16, 18), 5: (20, 23)})
# segmentation labels: baseline lesion 4 (x 25-26) is a false positive
BL_LAB = vol({1: (0, 4), 2: (6, 9), 3: (12, 14), 4: (25, 27), 5: (20, 23)})
FU_LAB = vol({1: (0, 4), 2: (6, 9), 3: (16, 18), 4: (20, 23)})


def test_lesion_truth_ids_largest_overlap_lowest_id_on_ties():
    assert lesion_truth_ids(BL_LAB, 5, BL_TRUTH).tolist() == [1, 2, 3, 0, 5]
    assert lesion_truth_ids(FU_LAB, 4, FU_TRUTH).tolist() == [1, 2, 4, 5]
    truth = vol({3: (0, 2), 2: (2, 4), 7: (4, 7)})
    lab = vol({1: (0, 4), 2: (4, 6)})
    assert lesion_truth_ids(lab, 2, truth).tolist() == [2, 7]   # 2 vs 2 voxels: the lower id wins
    assert lesion_truth_ids(vol({}), 0, truth).tolist() == []
    with pytest.raises(InputError):
        lesion_truth_ids(lab, 1, truth)                       # label 2 > n


def test_hand_counted_precision_recall_new_vanished():
    matches = [Match(1, 1, "persisting"), Match(2, 3, "persisting"), Match(5, 4, "persisting"),
               Match(3, None, "vanished"), Match(4, None, "vanished"), Match(None, 2, "new")]
    acc = tracking_accuracy(matches, lesion_truth_ids(BL_LAB, 5, BL_TRUTH), lesion_truth_ids(FU_LAB, 4, FU_TRUTH))
    d = acc.to_dict()
    assert (d["n_predicted"], d["n_correct"], d["n_true_persisting"], d["n_recovered"]) == (3, 2, 3, 2)
    assert d["precision"] == pytest.approx(2 / 3) and d["recall"] == pytest.approx(2 / 3)
    assert d["f1"] == pytest.approx(2 / 3)
    # the one "new" call is lesion 2 (truth 2 persists): wrong; truth 4 was never called new
    assert (d["n_called_new"], d["n_new_correct"], d["n_true_new"], d["n_new_found"]) == (1, 0, 1, 0)
    assert d["new_precision"] == 0.0 and d["new_recall"] == 0.0
    # vanished: lesion 3 (truth 3 vanished) right, lesion 4 (no truth: a false positive) wrong
    assert (d["n_called_vanished"], d["n_vanished_correct"], d["n_true_vanished"]) == (2, 1, 1)
    assert d["vanished_precision"] == 0.5 and d["vanished_recall"] == 1.0
    assert d["n_baseline_no_truth"] == 1 and d["n_followup_no_truth"] == 0 and d["status"] == "ok"
    # the stored (dict) form of the matches gives the same answer
    again = tracking_accuracy([m.to_dict() for m in matches], lesion_truth_ids(BL_LAB, 5, BL_TRUTH),
                              lesion_truth_ids(FU_LAB, 4, FU_TRUTH))
    assert again == acc


def test_matcher_on_identical_segmentation_is_perfect():
    bl = vol({1: (0, 4), 2: (6, 9), 3: (12, 14), 4: (20, 23)})      # = BL_TRUTH relabelled 1..4
    fu = vol({1: (0, 4), 2: (6, 9), 3: (16, 18), 4: (20, 23)})
    matches = match_lesions(bl, 4, fu, 4, spacing=(4.0, 4.0, 4.0), max_distance_mm=6.0)
    d = tracking_accuracy(matches, lesion_truth_ids(bl, 4, BL_TRUTH), lesion_truth_ids(fu, 4, FU_TRUTH)).to_dict()
    assert (d["precision"], d["recall"], d["f1"]) == (1.0, 1.0, 1.0)
    assert (d["new_precision"], d["new_recall"], d["vanished_precision"], d["vanished_recall"]) == (1.0,) * 4


def test_split_fragments_count_once_for_recall():
    fu = vol({1: (0, 2), 2: (3, 4)})                                  # truth 1 in two fragments
    fu_truth = vol({1: (0, 4)})
    bl = vol({1: (0, 4)})
    matches = [Match(1, 1, "persisting"), Match(1, 2, "split")]
    d = tracking_accuracy(matches, lesion_truth_ids(bl, 1, vol({1: (0, 4)})), lesion_truth_ids(fu, 2, fu_truth))
    d = d.to_dict()
    assert (d["n_predicted"], d["n_correct"], d["n_recovered"], d["n_true_persisting"]) == (2, 2, 1, 1)
    assert d["precision"] == 1.0 and d["recall"] == 1.0


def test_followup_without_lesions_is_recorded_not_a_crash():
    bl = vol({1: (0, 4)})
    matches = match_lesions(bl, 1, vol({}), 0, spacing=(4.0, 4.0, 4.0))
    d = tracking_accuracy(matches, lesion_truth_ids(bl, 1, BL_TRUTH), lesion_truth_ids(vol({}), 0, FU_TRUTH)).to_dict()
    assert d["status"] == "no_followup_lesions"
    assert d["precision"] is None and d["recall"] is None and d["f1"] is None
    assert d["vanished_precision"] == 1.0 and d["vanished_recall"] == 1.0 and d["new_recall"] is None
    none = tracking_accuracy([], [], []).to_dict()
    assert none["status"] == "no_followup_lesions" and none["n_predicted"] == 0


def test_pool_accuracy_sums_counts_and_recomputes_ratios():
    a = {k: 0 for k in ACCURACY_COUNTS} | {"n_predicted": 3, "n_correct": 2, "n_true_persisting": 4,
                                            "n_recovered": 2}
    b = {"n_predicted": 1, "n_correct": 1, "n_true_persisting": 1, "n_recovered": 1, "status": "ok"}
    p = pool_accuracy([a, b])
    assert p["n_scans"] == 2 and p["n_predicted"] == 4 and p["n_correct"] == 3
    assert p["precision"] == 0.75 and p["recall"] == 0.6 and p["f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert pool_accuracy([])["precision"] is None


def test_bad_matches_are_refused():
    with pytest.raises(InputError):
        tracking_accuracy([Match(3, 1, "persisting")], [1], [1])
    with pytest.raises(InputError):
        tracking_accuracy([{"baseline_lesion": 1, "followup_lesion": 1, "status": "odd"}], [1], [1])


def test_match_to_dict_holds_every_field():
    import dataclasses

    for m in (Match(1, 2, "persisting", 3.5, 0.25), Match(None, 4, "new"), Match(5, None, "vanished")):
        assert m.to_dict() == dataclasses.asdict(m)
