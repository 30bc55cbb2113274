"""Lesion tracking between a baseline and a follow-up scan.

Baseline lesions are on the follow-up grid already: the ``track`` stage maps
the baseline labels with the committed rigid registration (docs/methods.md
"Registration"). Without a registration, baselines on another grid are matched
by centroid distance in physical LPS coordinates (:func:`match_centroids`).

:func:`match_lesions` (same grid), in three passes:

1. Overlap. A pair is admissible when its overlap coefficient
   ``|A n B| / min(|A|, |B|)`` is >= ``overlap_min`` (the coefficient, not IoU,
   keeps a small remnant inside a large shrinking lesion matched). One-to-one
   pairs: the most pairs, then the largest summed IoU
   (``scipy.optimize.linear_sum_assignment``): status ``persisting``.
2. Splits and merges. A follow-up lesion left unmatched that overlaps a
   matched baseline lesion admissibly is a fragment of it: status ``split``
   (not new). A baseline lesion left unmatched that overlaps a matched
   follow-up lesion admissibly has merged into it: status ``merged`` (not
   vanished). Each is paired with the admissible partner of largest IoU.
3. Distance. The remaining lesions are paired one-to-one among pairs with
   centroids at most ``max_distance_mm`` apart: the most pairs, then the
   smallest total distance (not greedy nearest-first): status ``persisting``.
Assignments run per connected component of the admissible pairs (exact; small
even for noisy masks with thousands of components).
Leftovers: baseline -> ``vanished``, follow-up -> ``new``.

Connectivity: labels come from :func:`petcohort.engine.kernels.label.label`
with the run's connectivity (the same everywhere, docs/methods.md).

Accuracy against known lesion identities (docs/methods.md "Lesion tracking
accuracy"; the synthetic cohort's ``truth/lesion_ids`` are stable across
timepoints), :func:`lesion_truth_ids` and :func:`tracking_accuracy`:

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
from petcohort.engine.kernels._validate import check_fraction, check_positive, check_same_grid, check_spacing
from petcohort.engine.kernels.label import lesion_voxels

__all__ = ["Match", "match_lesions", "match_centroids", "centroids_mm", "lesion_voxels", "summarise",
           "STATUSES",
           "lesion_truth_ids", "TrackingAccuracy", "tracking_accuracy", "pool_accuracy", "ACCURACY_COUNTS"]

STATUSES = ("persisting", "split", "merged", "vanished", "new")
_BIG = 1e12  # cost of an inadmissible pair; such pairs are dropped after the assignment


@dataclass(frozen=True)
class Match:
    """One tracking record. ``baseline_lesion`` is None for ``new``, ``followup_lesion`` None for ``vanished``."""

    baseline_lesion: int | None
    followup_lesion: int | None
    status: str
    distance_mm: float | None = None
    iou: float | None = None

    def to_dict(self) -> dict[str, Any]:
        # the fields by hand: dataclasses.asdict deep-copies each value, 0.5 of 10 CPU s of the demo's track
        return {"baseline_lesion": self.baseline_lesion, "followup_lesion": self.followup_lesion,
                "status": self.status, "distance_mm": self.distance_mm, "iou": self.iou}


def _centroids(idx: np.ndarray, values: np.ndarray, shape: tuple[int, ...], n: int) -> np.ndarray:
    """(n, 3) voxel-index centroids of labels 1..n from :func:`lesion_voxels` (NaN rows: empty labels)."""
    counts = np.bincount(values, minlength=n + 1)[1:n + 1].astype(np.float64)
    out = np.empty((n, 3))
    for axis, coord in enumerate(np.unravel_index(idx, shape)):
        sums = np.bincount(values, weights=coord, minlength=n + 1)[1:n + 1]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, axis] = sums / counts
    return out


def centroids_mm(labels: Any, n: int, *, spacing: Sequence[float],
                 origin: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """Centroid of each label 1..n in mm, ``origin + index * spacing`` (z, y, x).

    Returns
    -------
    (n, 3) ndarray of float64; NaN rows for labels with no voxel.
    """
    labels = backend.to_numpy(labels)
    spacing = np.asarray(check_spacing(spacing))
    idx, values = lesion_voxels(labels)
    return _centroids(idx, values, labels.shape, n) * spacing + np.asarray(origin, dtype=np.float64)


def _assign(rows: np.ndarray, cols: np.ndarray, cost: np.ndarray, n_rows: int, n_cols: int) -> list[tuple[int, int]]:
    """Optimal one-to-one assignment over the admissible edges ``(rows[k], cols[k])`` of ``cost[k]``.

    Maximum number of pairs first, then minimum total cost (an inadmissible
    pair costs ``_BIG`` and is dropped). The bipartite graph is split into
    connected components, each solved densely by
    ``scipy.optimize.linear_sum_assignment``: exact, since no admissible edge
    joins two components, and small even when a noisy mask holds thousands
    of lesions.
    """
    from scipy.optimize import linear_sum_assignment  # noqa: PLC0415
    from scipy.sparse import coo_matrix  # noqa: PLC0415
    from scipy.sparse.csgraph import connected_components  # noqa: PLC0415

    if rows.size == 0:
        return []
    graph = coo_matrix((np.ones(rows.size), (rows, cols + n_rows)), shape=(n_rows + n_cols,) * 2)
    _, comp = connected_components(graph, directed=False)
    order = np.argsort(comp[rows], kind="stable")
    _, starts = np.unique(comp[rows][order], return_index=True)
    out: list[tuple[int, int]] = []
    for sel in np.split(order, starts[1:]):  # the edges of one component
        r_ids, c_ids = np.unique(rows[sel]), np.unique(cols[sel])
        dense = np.full((r_ids.size, c_ids.size), _BIG)
        ok = np.zeros(dense.shape, dtype=bool)
        ri, ci = np.searchsorted(r_ids, rows[sel]), np.searchsorted(c_ids, cols[sel])
        dense[ri, ci], ok[ri, ci] = cost[sel], True
        for r, c in zip(*linear_sum_assignment(dense)):
            if ok[r, c]:
                out.append((int(r_ids[r]), int(c_ids[c])))
    return out


def _distance_pass(bl_ids: list[int], fu_ids: list[int], bl_c: np.ndarray, fu_c: np.ndarray,
                   max_distance_mm: float) -> list[Match]:
    from scipy.spatial import cKDTree  # noqa: PLC0415

    out: list[Match] = []
    b = bl_c[[i - 1 for i in bl_ids]].reshape(-1, 3)
    f = fu_c[[j - 1 for j in fu_ids]].reshape(-1, 3)
    fb, ff = np.flatnonzero(np.isfinite(b).all(axis=1)), np.flatnonzero(np.isfinite(f).all(axis=1))
    pairs: list[tuple[int, int]] = []
    dist: dict[tuple[int, int], float] = {}
    if fb.size and ff.size:
        # pairs within reach only (k-d tree), never a dense n x m distance matrix
        near = cKDTree(b[fb]).sparse_distance_matrix(cKDTree(f[ff]), max_distance_mm, output_type="ndarray")
        r, c, d = fb[near["i"]], ff[near["j"]], near["v"]
        dist = {(int(x), int(y)): float(v) for x, y, v in zip(r, c, d)}
        pairs = _assign(r, c, d, len(bl_ids), len(fu_ids))
    used_b, used_f = {r for r, _ in pairs}, {c for _, c in pairs}
    for r, c in pairs:
        out.append(Match(bl_ids[r], fu_ids[c], "persisting", dist[(r, c)], None))
    out += [Match(bl_ids[r], None, "vanished") for r in range(len(bl_ids)) if r not in used_b]
    out += [Match(None, fu_ids[c], "new") for c in range(len(fu_ids)) if c not in used_f]
    return out


def _sorted(matches: list[Match]) -> list[Match]:
    big = 1 << 30
    return sorted(matches, key=lambda m: (m.baseline_lesion if m.baseline_lesion is not None else big,
                                          m.followup_lesion if m.followup_lesion is not None else big))


def match_centroids(bl_centroids_mm: Any, fu_centroids_mm: Any, *, max_distance_mm: float = 20.0) -> list[Match]:
    """Match lesions by centroid distance only (no voxel overlap available).

    Parameters
    ----------
    bl_centroids_mm, fu_centroids_mm : (n, 3) and (m, 3) array-like, mm
        Centroids in one physical frame; row ``i`` is lesion ``i + 1``.
    max_distance_mm : float
        Pairs farther apart are never matched.

    Returns
    -------
    list of Match, sorted by baseline then follow-up label.
    """
    max_distance_mm = check_positive(max_distance_mm, "max_distance_mm")
    bl = np.asarray(bl_centroids_mm, dtype=np.float64).reshape(-1, 3)
    fu = np.asarray(fu_centroids_mm, dtype=np.float64).reshape(-1, 3)
    return _sorted(_distance_pass(list(range(1, len(bl) + 1)), list(range(1, len(fu) + 1)), bl, fu,
                                  max_distance_mm))


def match_lesions(bl_labels: Any, nbl: int, fu_labels: Any, nfu: int, *, spacing: Sequence[float],
                  max_distance_mm: float = 20.0, overlap_min: float = 0.1,
                  fu_voxels: tuple[np.ndarray, np.ndarray] | None = None) -> list[Match]:
    """Match baseline to follow-up lesions on one voxel grid (module docstring).

    Parameters
    ----------
    bl_labels, fu_labels : (Z, Y, X) ndarray of int, same grid
        Labels 0..nbl and 0..nfu (baseline registered to the follow-up grid).
    nbl, nfu : int
        Label counts.
    spacing : (sz, sy, sx) mm
    max_distance_mm : float
        Largest centroid distance for the distance pass.
    overlap_min : float in (0, 1]
        Smallest overlap coefficient ``|A n B| / min(|A|, |B|)`` counted as overlap.
    fu_voxels : (indices, labels), optional
        :func:`lesion_voxels` of ``fu_labels`` when the caller has it already.

    Returns
    -------
    list of Match, sorted by baseline then follow-up label; every baseline
    and every follow-up lesion appears at least once.
    """
    spacing = check_spacing(spacing)
    max_distance_mm = check_positive(max_distance_mm, "max_distance_mm")
    overlap_min = check_fraction(overlap_min, "overlap_min")
    bl = backend.to_numpy(bl_labels)
    fu = backend.to_numpy(fu_labels)
    check_same_grid(bl, fu, names=("bl_labels", "fu_labels"))
    # lesion voxels only (C order): the sizes, centroids and overlaps below equal whole-volume ones exactly
    (bl_idx, bl_v), (fu_idx, fu_v) = lesion_voxels(bl), lesion_voxels(fu) if fu_voxels is None else fu_voxels
    for name, v, n in (("bl_labels", bl_v, nbl), ("fu_labels", fu_v, nfu)):
        top = int(v.max()) if v.size else 0  # the volume's max whenever it exceeds n >= 0
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0 or top > n:
            raise InputError("BAD_VALUE", f"{name} must hold labels 0..n with n >= 0 the label count; "
                             f"got n={n!r}, max label {max(top, 0)}")
    size_b = np.bincount(bl_v, minlength=nbl + 1)[1:].astype(np.float64)
    size_f = np.bincount(fu_v, minlength=nfu + 1)[1:].astype(np.float64)
    bl_c = _centroids(bl_idx, bl_v, bl.shape, nbl) * np.asarray(spacing)
    fu_c = _centroids(fu_idx, fu_v, fu.shape, nfu) * np.asarray(spacing)
    # Overlapping pairs only (sparse): noisy masks hold thousands of lesions,
    # and dense nbl x nfu matrices would not fit in memory.
    _, in_b, in_f = np.intersect1d(bl_idx, fu_idx, assume_unique=True, return_indices=True)
    codes, inter = np.unique((bl_v[in_b].astype(np.int64) - 1) * nfu + (fu_v[in_f].astype(np.int64) - 1),
                             return_counts=True)
    pb, pf = codes // max(nfu, 1), codes % max(nfu, 1)
    inter = inter.astype(np.float64)
    iou = inter / (size_b[pb] + size_f[pf] - inter)
    keep = inter / np.minimum(size_b[pb], size_f[pf]) >= overlap_min
    pb, pf, iou = pb[keep], pf[keep], iou[keep]

    def record(r: int, c: int, status: str, v: float) -> Match:
        return Match(int(r) + 1, int(c) + 1, status, float(np.linalg.norm(bl_c[r] - fu_c[c])), float(v))

    matches: list[Match] = []
    pairs = _assign(pb, pf, -iou, nbl, nfu)
    iou_of = {(int(r), int(c)): float(v) for r, c, v in zip(pb, pf, iou)}
    matched_b, matched_f = np.zeros(nbl, bool), np.zeros(nfu, bool)
    for r, c in pairs:
        matches.append(record(r, c, "persisting", iou_of[(r, c)]))
        matched_b[r] = matched_f[c] = True
    pair_f = matched_f.copy()
    # fragments of a matched baseline lesion; then baseline lesions merged into a matched follow-up one
    for status, own, other, own_matched, other_matched in (("split", pf, pb, matched_f, matched_b.copy()),
                                                            ("merged", pb, pf, matched_b, pair_f)):
        cand = np.flatnonzero(other_matched[other] & ~own_matched[own])
        # per lesion x: the partner of largest IoU, then lowest label (first row of each group)
        order = cand[np.lexsort((other[cand], -iou[cand], own[cand]))]
        _, first = np.unique(own[order], return_index=True)
        for k in order[first]:
            x, y = int(own[k]), int(other[k])
            r, c = (y, x) if status == "split" else (x, y)
            matches.append(record(r, c, status, iou[k]))
            own_matched[x] = True
    rest_b = [r + 1 for r in range(nbl) if not matched_b[r] and size_b[r] > 0]
    rest_f = [c + 1 for c in range(nfu) if not matched_f[c] and size_f[c] > 0]
    matches += _distance_pass(rest_b, rest_f, bl_c, fu_c, max_distance_mm)
    return _sorted(matches)


def summarise(matches: Sequence[Match]) -> dict[str, Any]:
    """JSON summary: the matches and counts per status (``n_persisting`` counts persisting pairs only)."""
    counts = {s: sum(1 for m in matches if m.status == s) for s in STATUSES}
    return {"matches": [m.to_dict() for m in matches], "n_new": counts["new"], "n_vanished": counts["vanished"],
            "n_persisting": counts["persisting"], "n_split": counts["split"], "n_merged": counts["merged"]}


# -- accuracy against known lesion identities (module docstring) ---------------------------------
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
