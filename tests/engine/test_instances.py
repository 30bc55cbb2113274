"""Instance-aware lesions (METHODS "Lesions and volumes"): segments kept apart, split into parts."""
import numpy as np
import pytest

from petcohort.engine.errors import InputError
from petcohort.engine.kernels import lesions, metrics
from petcohort.engine.kernels.label import label, label_instances, lesion_labels


def _touching_instances():
    inst = np.zeros((4, 10, 12), np.uint16)
    inst[1:3, 2:5, 2:5] = 7          # instance 7 ...
    inst[1:3, 2:5, 5:8] = 3          # ... touches instance 3 face to face
    inst[1:3, 8:10, 9:11] = 7        # instance 7 has a second, disconnected part
    return inst


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_touching_instances_stay_apart_and_parts_split(connectivity):
    inst = _touching_instances()
    labels, n, parents = label_instances(inst, connectivity=connectivity)
    assert n == 3 and labels.dtype == np.int32
    # one label per (instance, connected part); each label lies inside one instance
    for lab in range(1, n + 1):
        values = np.unique(inst[labels == lab])
        assert values.tolist() == [parents[lab - 1]]
    assert sorted(parents.tolist()) == [3, 7, 7]
    np.testing.assert_array_equal(labels != 0, inst != 0)
    # the binary mask alone merges the touching pair: 2 lesions, not 3
    assert label(inst != 0, connectivity=connectivity)[1] == 2


def test_lesion_labels_without_instances_is_plain_labelling():
    mask = _touching_instances() != 0
    labels, n, parents = lesion_labels(mask, None, connectivity=26)
    ref, n_ref = label(mask, connectivity=26)
    assert parents is None and n == n_ref
    np.testing.assert_array_equal(labels, ref)


def test_quantify_uses_instances_and_reports_segment():
    inst = _touching_instances()
    rng = np.random.default_rng(0)
    pet = rng.uniform(1, 9, inst.shape).astype(np.float32)
    mask = (inst != 0).astype(np.uint8)
    q = lesions.quantify(pet, mask, spacing=(2.0, 2.0, 2.0), instances=inst)
    assert q.study["lesion_count"] == 3 and sorted(les["segment"] for les in q.lesions) == [3, 7, 7]
    for les in q.lesions:
        sel = q.labels == les["lesion"]
        assert les["voxels"] == int(sel.sum())
        assert les["suvmax"] == pytest.approx(float(pet[sel].max()))
        assert les["suvmean"] == pytest.approx(float(pet[sel].astype(np.float64).mean()))
    # study totals use the binary union: identical with and without instances
    plain = lesions.quantify(pet, mask, spacing=(2.0, 2.0, 2.0))
    assert plain.study["lesion_count"] == 2 and "segment" not in plain.lesions[0]
    for key in ("mtv_ml", "tlg", "suvmax", "suvmean", "suvpeak"):
        assert q.study[key] == pytest.approx(plain.study[key])
    with pytest.raises(InputError) as e:
        lesions.quantify(pet, mask, spacing=(2.0, 2.0, 2.0), instances=np.zeros_like(inst))
    assert e.value.reason == "INSTANCES_MISMATCH"


def test_detection_counts_instances():
    inst = _touching_instances()
    truth = inst != 0
    pred = np.zeros_like(truth)
    pred[1:3, 2:5, 2:4] = True        # 2/3 of instance 7's first part: 1/3 of the blob it merges into
    plain = metrics.detection(truth, pred)
    assert (plain.tp, plain.fn) == (0, 2)        # the merged blob is only half covered
    det = metrics.detection(truth, pred, truth_instances=inst)
    assert (det.tp, det.fn, det.tp_pred, det.fp) == (1, 2, 1, 0)
    out = metrics.evaluate(truth, pred, spacing=(1, 1, 1), truth_instances=inst)
    assert out["n_truth"] == 3 and out["tp"] == 1
