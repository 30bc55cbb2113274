"""Segmentation evaluation: Dice, pooled (global) Dice, lesion detection, FP/FN volumes.

Definitions: docs/methods.md "Segmentation evaluation" (the paper's section 2.3)
and the autoPET challenge metrics (Gatidis et al., "The autoPET challenge",
https://autopet.grand-challenge.org/Evaluation/):

* Dice = 2 |T n P| / (|T| + |P|). Undefined when both masks are empty:
  ``dice`` returns None and :func:`evaluate` reports ``dice_reason =
  "BOTH_EMPTY"`` (the cohort's global Dice still pools such studies, they add 0
  to every sum).
* Global Dice = 2 sum |T n P| / (sum |T| + sum |P|) over studies: keep the
  :class:`DiceParts` of each study and pool them with :func:`global_dice`.
* Detection: a ground-truth lesion is a TP when >= ``overlap`` of its voxels
  lie in the predicted mask, else an FN; a predicted lesion is a TP_pred when
  >= ``overlap`` of its voxels lie in the ground-truth mask, else an FP.
  recall = TP / (TP + FN), precision = TP_pred / (TP_pred + FP).
* FP volume = volume of predicted components with no voxel in the ground
  truth; FN volume = volume of ground-truth components with no voxel in the
  prediction (autoPET).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from petcohort.engine import backend
from petcohort.engine.errors import InputError
from petcohort.engine.kernels._validate import (check_3d, check_connectivity, check_fraction, check_same_grid,
                                                 check_spacing)
from petcohort.engine.kernels.label import lesion_labels

__all__ = ["DiceParts", "Detection", "dice", "dice_parts", "global_dice", "detection", "evaluate"]


@dataclass(frozen=True)
class DiceParts:
    """Voxel counts of one study, to pool into a global Dice."""

    intersect: int
    truth: int
    pred: int

    @property
    def dice(self) -> float | None:
        denom = self.truth + self.pred
        return None if denom == 0 else 2.0 * self.intersect / denom


@dataclass(frozen=True)
class Detection:
    """Lesion-level detection counts of one study (see module docstring)."""

    tp: int
    fn: int
    tp_pred: int
    fp: int
    fp_component_voxels: int   # predicted components with no GT voxel (autoPET FP volume)
    fn_component_voxels: int   # GT components with no predicted voxel (autoPET FN volume)

    @property
    def recall(self) -> float | None:
        return None if self.tp + self.fn == 0 else self.tp / (self.tp + self.fn)

    @property
    def precision(self) -> float | None:
        return None if self.tp_pred + self.fp == 0 else self.tp_pred / (self.tp_pred + self.fp)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pair(truth: Any, pred: Any) -> tuple[np.ndarray, np.ndarray]:
    check_3d(truth, "truth")
    check_3d(pred, "pred")
    check_same_grid(truth, pred, names=("truth", "pred"))
    return backend.to_numpy(truth) != 0, backend.to_numpy(pred) != 0


def dice_parts(truth: Any, pred: Any) -> DiceParts:
    """Intersection and sizes (voxels) of two (Z, Y, X) masks on one grid."""
    t, p = _pair(truth, pred)
    return DiceParts(int(np.count_nonzero(t & p)), int(np.count_nonzero(t)), int(np.count_nonzero(p)))


def dice(truth: Any, pred: Any) -> float | None:
    """Dice coefficient of two masks; None when both are empty (undefined)."""
    return dice_parts(truth, pred).dice


def global_dice(parts: Iterable[DiceParts | dict[str, int]]) -> float | None:
    """Dice pooled voxel-wise over studies: 2 sum I / (sum T + sum P); None when all empty.

    ``parts`` holds :class:`DiceParts` or dicts with ``intersect``,
    ``truth_voxels`` and ``pred_voxels`` (the keys :func:`evaluate` returns).
    """
    i = t = p = 0
    for part in parts:
        if isinstance(part, DiceParts):
            i, t, p = i + part.intersect, t + part.truth, p + part.pred
        else:
            i += int(part["intersect"])
            t += int(part["truth_voxels"])
            p += int(part["pred_voxels"])
    return DiceParts(i, t, p).dice


def _overlaps(labels: np.ndarray, n: int, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(size, voxels inside ``other``) of labels 1..n, as arrays of length n."""
    fg = labels != 0
    ids = labels[fg]
    size = np.bincount(ids, minlength=n + 1)[1:]
    inside = np.bincount(ids, weights=other[fg], minlength=n + 1)[1:].astype(np.int64)
    return size, inside


def _detect(t: np.ndarray, p: np.ndarray, connectivity: int, overlap: float, t_inst: Any = None,
            p_inst: Any = None) -> Detection:
    t_lab, nt, _ = lesion_labels(t, _host(t_inst, t), connectivity=connectivity)
    p_lab, np_, _ = lesion_labels(p, _host(p_inst, p), connectivity=connectivity)
    t_size, t_in = _overlaps(t_lab, nt, p)
    p_size, p_in = _overlaps(p_lab, np_, t)
    # Compare the correctly rounded fraction with ``overlap``: 3 / 10 == 0.3
    # holds, whereas 0.3 * 10 rounds above 3 and would turn a TP into an FN.
    tp_mask = t_in / np.maximum(t_size, 1) >= overlap
    tp_pred_mask = p_in / np.maximum(p_size, 1) >= overlap
    return Detection(tp=int(tp_mask.sum()), fn=int(nt - tp_mask.sum()), tp_pred=int(tp_pred_mask.sum()),
                     fp=int(np_ - tp_pred_mask.sum()),
                     fp_component_voxels=int(p_size[p_in == 0].sum()),
                     fn_component_voxels=int(t_size[t_in == 0].sum()))


def _host(instances: Any, mask: np.ndarray) -> np.ndarray | None:
    """An instance map on the host, checked against its mask (same grid, same foreground)."""
    if instances is None:
        return None
    check_3d(instances, "instances")
    inst = backend.to_numpy(instances)
    if inst.shape != mask.shape or not np.array_equal(inst != 0, mask):
        raise InputError("INSTANCES_MISMATCH", "an instance map's foreground differs from its lesion mask")
    return inst


def detection(truth: Any, pred: Any, *, connectivity: int = 26, overlap: float = 0.5,
              truth_instances: Any = None, pred_instances: Any = None) -> Detection:
    """Lesion detection counts (TP/FN over GT lesions, TP_pred/FP over predicted lesions).

    Parameters
    ----------
    truth, pred : (Z, Y, X) masks on one grid (non-zero = lesion)
    connectivity : {6, 18, 26}
        Defines lesions in both masks.
    overlap : float in (0, 1]
        Minimal overlapping fraction of a lesion's voxels (``>=``).
    truth_instances, pred_instances : integer ndarray, optional
        Instance maps of the masks: lesions are then the instances (split
        into connected parts), as :func:`~petcohort.engine.kernels.label.lesion_labels`.
    """
    t, p = _pair(truth, pred)
    return _detect(t, p, check_connectivity(connectivity), check_fraction(overlap, "overlap"), truth_instances,
                   pred_instances)


def evaluate(truth: Any, pred: Any, *, spacing: Sequence[float], connectivity: int = 26,
             overlap: float = 0.5, truth_instances: Any = None, pred_instances: Any = None) -> dict[str, Any]:
    """All per-study evaluation values as one JSON-ready dict.

    Returns
    -------
    dict
        ``dice`` (+ ``dice_reason`` ``BOTH_EMPTY``), ``intersect``,
        ``truth_voxels``, ``pred_voxels`` (pool these for the global Dice),
        ``truth_ml``, ``pred_ml``, ``n_truth``, ``n_pred``, ``tp``, ``fn``,
        ``tp_pred``, ``fp``, ``recall`` / ``precision`` (+ ``*_reason``
        ``NO_TRUTH_LESIONS`` / ``NO_PRED_LESIONS``), ``fp_volume_ml``,
        ``fn_volume_ml``.
    """
    sp = check_spacing(spacing)
    connectivity = check_connectivity(connectivity)
    overlap = check_fraction(overlap, "overlap")
    t, p = _pair(truth, pred)
    voxel_ml = math.prod(sp) / 1000.0
    parts = DiceParts(int(np.count_nonzero(t & p)), int(np.count_nonzero(t)), int(np.count_nonzero(p)))
    det = _detect(t, p, connectivity, overlap, truth_instances, pred_instances)
    out: dict[str, Any] = {
        "dice": parts.dice, "intersect": parts.intersect, "truth_voxels": parts.truth,
        "pred_voxels": parts.pred, "truth_ml": parts.truth * voxel_ml, "pred_ml": parts.pred * voxel_ml,
        "n_truth": det.tp + det.fn, "n_pred": det.tp_pred + det.fp,
        "tp": det.tp, "fn": det.fn, "tp_pred": det.tp_pred, "fp": det.fp,
        "recall": det.recall, "precision": det.precision,
        "fp_volume_ml": det.fp_component_voxels * voxel_ml, "fn_volume_ml": det.fn_component_voxels * voxel_ml,
    }
    if parts.dice is None:
        out["dice_reason"] = "BOTH_EMPTY"
    if det.recall is None:
        out["recall_reason"] = "NO_TRUTH_LESIONS"
    if det.precision is None:
        out["precision_reason"] = "NO_PRED_LESIONS"
    return out
