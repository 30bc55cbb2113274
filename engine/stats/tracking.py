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

Accuracy against known lesion identities: :mod:`petcohort.engine.stats.tracking_accuracy`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from petcohort.engine import backend
from petcohort.engine.errors import InputError
from petcohort.engine.kernels._validate import check_fraction, check_positive, check_same_grid, check_spacing
from petcohort.engine.kernels.label import lesion_voxels

__all__ = ["Match", "match_lesions", "match_centroids", "centroids_mm", "lesion_voxels", "summarise", "STATUSES"]

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
