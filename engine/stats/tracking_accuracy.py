"""Tracking accuracy against known lesion identities.

The synthetic cohort's ``truth/lesion_ids`` are stable across timepoints
(docs/methods.md "Lesion tracking accuracy"); :func:`lesion_truth_ids` gives
each lesion of a scan its truth id and :func:`tracking_accuracy` scores the
matches of :func:`petcohort.engine.stats.tracking.match_lesions` with them.

Definitions:

* ``T(x)``: the truth id with the largest voxel overlap in lesion ``x``, on
  the lesion's own scan (ties: the lowest id; 0 when it overlaps no truth
  lesion, i.e. a false-positive lesion).
* A truth id is *present in a mask* when it is ``T`` of at least one of the
  mask's lesions. True persisting ids: present in both the baseline and the
  follow-up mask; truly new: present in the follow-up mask only; truly
  vanished: in the baseline mask only. (Conditional on the segmentation: a
  lesion the segmentation missed is not a tracking error.)
* Predicted matches: every record pairing a baseline lesion ``a`` with a
  follow-up lesion ``b`` (``persisting``, ``split``, ``merged``); correct when
  ``T(a) == T(b) != 0``. Precision = correct / predicted matches. Recall =
  true persisting ids with at least one correct match / true persisting ids
  (counted per id, so a split lesion's two correct fragments cannot push it
  above 1). F1 = 2 P R / (P + R).
* New lesions: a lesion called ``new`` is correct when ``T(b)`` is truly new;
  precision = correct / called new, recall = truly new ids with a correct
  ``new`` call / truly new ids. Vanished: the same with baseline lesions.
* An undefined ratio (0 / 0) is None; :func:`pool_accuracy` sums the counts
  of several scans and recomputes the ratios (micro average).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from petcohort.engine import backend
from petcohort.engine.errors import InputError
from petcohort.engine.kernels._validate import check_same_grid
from petcohort.engine.kernels.label import lesion_voxels
from petcohort.engine.stats.tracking import STATUSES, Match

__all__ = ["lesion_truth_ids", "TrackingAccuracy", "tracking_accuracy", "pool_accuracy", "ACCURACY_COUNTS"]

#: The additive counts of a :class:`TrackingAccuracy` (pooled by :func:`pool_accuracy`).
ACCURACY_COUNTS = ("n_predicted", "n_correct", "n_true_persisting", "n_recovered",
                   "n_called_new", "n_new_correct", "n_true_new", "n_new_found",
                   "n_called_vanished", "n_vanished_correct", "n_true_vanished", "n_vanished_found",
                   "n_baseline_lesions", "n_followup_lesions", "n_baseline_no_truth", "n_followup_no_truth")
_PAIRED_STATUSES = ("persisting", "split", "merged")


def lesion_truth_ids(labels: Any, n: int, truth_ids: Any,
                     voxels: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """The truth id of largest overlap of each lesion 1..n (ties: lowest id; 0 = none).

    Parameters
    ----------
    labels : (Z, Y, X) ndarray of int
        Lesion labels 0..n of one scan.
    n : int
        Label count.
    truth_ids : (Z, Y, X) ndarray of int, same grid
        Known lesion identities (0 = no lesion).
    voxels : (indices, labels), optional
        :func:`lesion_voxels` of ``labels`` when the caller has it already.

    Returns
    -------
    (n,) ndarray of int64
    """
    lab = backend.to_numpy(labels)
    truth = backend.to_numpy(truth_ids)
    check_same_grid(lab, truth, names=("labels", "truth_ids"))
    idx, values = lesion_voxels(lab) if voxels is None else voxels  # the (label, truth) pairs are counted
    top = int(values.max()) if values.size else 0      # the volume's max whenever it exceeds n >= 0
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0 or top > n:
        raise InputError("BAD_VALUE", f"labels must hold 0..n with n >= 0 the label count; got n={n!r}")
    hit = values > 0
    ids = truth.reshape(-1)[idx[hit]]
    both = ids > 0
    pairs = np.stack([values[hit][both].astype(np.int64), ids[both].astype(np.int64)])
    out = np.zeros(int(n), dtype=np.int64)
    if pairs.shape[1] == 0:
        return out
    uniq, counts = np.unique(pairs, axis=1, return_counts=True)
    # per label: the largest overlap first, then the lowest truth id
    order = np.lexsort((uniq[1], -counts, uniq[0]))
    first = np.unique(uniq[0][order], return_index=True)[1]
    best = order[first]
    out[uniq[0][best] - 1] = uniq[1][best]
    return out


def _ratio(num: int, den: int) -> float | None:
    return float(num) / den if den > 0 else None


def _f1(p: float | None, r: float | None) -> float | None:
    if p is None or r is None:
        return None
    return 0.0 if p + r == 0 else 2.0 * p * r / (p + r)


@dataclass(frozen=True)
class TrackingAccuracy:
    """Counts (:data:`ACCURACY_COUNTS`) and ratios of lesion tracking against truth (module docstring)."""

    n_predicted: int
    n_correct: int
    n_true_persisting: int
    n_recovered: int
    n_called_new: int
    n_new_correct: int
    n_true_new: int
    n_new_found: int
    n_called_vanished: int
    n_vanished_correct: int
    n_true_vanished: int
    n_vanished_found: int
    n_baseline_lesions: int
    n_followup_lesions: int
    n_baseline_no_truth: int
    n_followup_no_truth: int

    @property
    def precision(self) -> float | None:
        return _ratio(self.n_correct, self.n_predicted)

    @property
    def recall(self) -> float | None:
        return _ratio(self.n_recovered, self.n_true_persisting)

    @property
    def f1(self) -> float | None:
        return _f1(self.precision, self.recall)

    def to_dict(self) -> dict[str, Any]:
        """Counts, ratios (None when 0/0) and ``status`` (``ok``, ``no_followup_lesions``, ``no_baseline_lesions``)."""
        d: dict[str, Any] = asdict(self)
        status = "ok"
        if self.n_followup_lesions == 0:
            status = "no_followup_lesions"
        elif self.n_baseline_lesions == 0:
            status = "no_baseline_lesions"
        d.update(status=status, precision=self.precision, recall=self.recall, f1=self.f1,
                 new_precision=_ratio(self.n_new_correct, self.n_called_new),
                 new_recall=_ratio(self.n_new_found, self.n_true_new),
                 vanished_precision=_ratio(self.n_vanished_correct, self.n_called_vanished),
                 vanished_recall=_ratio(self.n_vanished_found, self.n_true_vanished))
        return d


def _field(m: Match | Mapping[str, Any], name: str) -> Any:
    return m.get(name) if isinstance(m, Mapping) else getattr(m, name)


def _truth_of(ids: np.ndarray, lesion: int, side: str) -> int:
    if not 1 <= lesion <= ids.size:
        raise InputError("BAD_VALUE", f"a match names {side} lesion {lesion}, outside 1..{ids.size}")
    return int(ids[lesion - 1])


def tracking_accuracy(matches: Sequence[Match | Mapping[str, Any]], bl_truth: Any, fu_truth: Any) -> TrackingAccuracy:
    """Tracking accuracy of ``matches`` against known lesion identities (module docstring).

    Parameters
    ----------
    matches : sequence of Match or dict
        :func:`match_lesions` output (or its ``to_dict()`` form, as stored
        in the ``track`` stage summary).
    bl_truth, fu_truth : (nbl,) and (nfu,) array-like of int
        :func:`lesion_truth_ids` of the baseline and the follow-up lesions,
        each on its own scan's grid.

    Returns
    -------
    TrackingAccuracy

    Raises
    ------
    InputError
        ``BAD_VALUE`` when a match names a lesion outside the truth arrays or
        has an unknown status.
    """
    bl = np.asarray(bl_truth, dtype=np.int64).reshape(-1)
    fu = np.asarray(fu_truth, dtype=np.int64).reshape(-1)
    present_b, present_f = set(bl[bl > 0].tolist()), set(fu[fu > 0].tolist())
    persisting, new, vanished = present_b & present_f, present_f - present_b, present_b - present_f
    n_pred = n_correct = 0
    recovered: set[int] = set()
    called_new = called_van = 0
    new_ok: list[int] = []
    van_ok: list[int] = []
    for m in matches:
        status = _field(m, "status")
        a, b = _field(m, "baseline_lesion"), _field(m, "followup_lesion")
        if status in _PAIRED_STATUSES:
            ta, tb = _truth_of(bl, int(a), "baseline"), _truth_of(fu, int(b), "follow-up")
            n_pred += 1
            if ta == tb != 0:
                n_correct += 1
                recovered.add(ta)
        elif status == "new":
            called_new += 1
            t = _truth_of(fu, int(b), "follow-up")
            if t in new:
                new_ok.append(t)
        elif status == "vanished":
            called_van += 1
            t = _truth_of(bl, int(a), "baseline")
            if t in vanished:
                van_ok.append(t)
        else:
            raise InputError("BAD_VALUE", f"unknown match status {status!r}; expected one of {STATUSES}")
    return TrackingAccuracy(n_pred, n_correct, len(persisting), len(recovered & persisting),
                            called_new, len(new_ok), len(new), len(set(new_ok)),
                            called_van, len(van_ok), len(vanished), len(set(van_ok)),
                            int(bl.size), int(fu.size), int(np.count_nonzero(bl == 0)),
                            int(np.count_nonzero(fu == 0)))


def pool_accuracy(items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Sum the :data:`ACCURACY_COUNTS` of several scans and recompute the ratios (micro average).

    Parameters
    ----------
    items : iterable of dict
        :meth:`TrackingAccuracy.to_dict` outputs (missing counts count 0).

    Returns
    -------
    dict
        The summed counts, ``n_scans`` and the ratios of
        :meth:`TrackingAccuracy.to_dict` (without ``status``).
    """
    totals = dict.fromkeys(ACCURACY_COUNTS, 0)
    n = 0
    for item in items:
        n += 1
        for k in ACCURACY_COUNTS:
            totals[k] += int(item.get(k) or 0)
    out = TrackingAccuracy(**totals).to_dict()
    out.pop("status")
    out["n_scans"] = n
    return out
