"""Stage ``track``: match a follow-up's lesions to its baseline's, per segmentation source.

For every ``seg/<src>`` of the follow-up (``config.sources`` filter as in
``quantify``) whose baseline counterpart exists (``seg/<src>`` on the
baseline; for ``nnunet_fu`` the baseline's ``nnunet_bl`` when it has no
``nnunet_fu``: the paper segments baselines with U-Net_BL), lesions are the
connected components at ``config.connectivity`` (the same labels as
``quantify``; one lesion per segment/ROI for instance masks) and are matched by
:func:`petcohort.engine.stats.tracking.match_lesions`.

Registration: when the follow-up's ``register`` stage committed (rigid ANTs
transform of the baseline PET onto the follow-up), the baseline's lesion
labels are resampled onto the follow-up grid with that transform (label
interpolation) and matched by voxel overlap, then centroid distance
(``registered``). Patients lie differently on the couch at each visit, so
without it lesions rarely overlap. When no registration is available (the
stage failed, or ANTs is not installed) the baseline is taken as aligned:
same grid -> overlap matcher (``overlap``); other grids -> centroids compared
in LPS mm (``centroid``). The method used is recorded per source.

Summary: ``{"sources": {src: {"baseline_source", "method", "n_baseline",
"n_followup", "matches": [{"baseline_lesion", "followup_lesion", "status",
"distance_mm", "iou"}], "n_new", "n_vanished", "n_persisting", "n_split",
"n_merged", "accuracy"}}, "skipped": {src: reason}, "accuracy_reason"}``.

Accuracy against truth: when both studies hold ``truth/lesion_ids`` (the
synthetic cohort's lesion identities, stable across timepoints), each
source gets ``accuracy``: :meth:`~petcohort.engine.stats.tracking_accuracy.TrackingAccuracy.to_dict`
of its matches, with each lesion's truth id taken on its own scan from the
same lesion labels the matcher used (docs/methods.md "Lesion tracking accuracy";
``status`` says ``no_followup_lesions`` / ``no_baseline_lesions``). Without
truth on either study, ``accuracy_reason`` is ``NO_TRUTH_IDS`` and no source
has ``accuracy``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from petcohort.engine.errors import StageError
from petcohort.engine.kernels.label import lesion_voxels
from petcohort.engine.stats.tracking import centroids_mm, match_centroids, match_lesions, summarise
from petcohort.engine.stats.tracking_accuracy import lesion_truth_ids, tracking_accuracy
from petcohort.pipelines.lesion_labels import study_lesion_labels
from petcohort.pipelines.stage_quantify import study_sources
from petcohort.pipelines.stages import StageContext, StageOutput, register_stage

__all__ = ["track_stage", "baseline_source", "require_baseline"]

# The matching distance and overlap thresholds are RunConfig.tracking (defaults: match_lesions').
#: Known lesion identities of a synthetic study (uint16, stable across timepoints).
TRUTH_IDS = "truth/lesion_ids"
#: follow-up source -> baseline source used when the baseline lacks the same name.
_PAIRED = {"nnunet_fu": "nnunet_bl"}


def require_baseline(ctx: StageContext) -> str:
    """The baseline study key, or ``StageError`` ``NO_BASELINE``."""
    if ctx.baseline_key is None or ctx.baseline_key not in ctx.store.study_keys():
        raise StageError("NO_BASELINE", f"study {ctx.key!r} is a follow-up whose baseline study is not in the "
                                        f"store (baseline_key={ctx.baseline_key!r})")
    return ctx.baseline_key


def baseline_source(ctx: StageContext, src: str) -> str | None:
    """The baseline's source matching follow-up source ``src`` (None when absent)."""
    base = require_baseline(ctx)
    for name in (src, _PAIRED.get(src)):
        if name is not None and ctx.store.has_array(base, f"seg/{name}"):
            return name
    return None


def _same_grid(a: dict[str, Any], b: dict[str, Any], shape_a: tuple, shape_b: tuple) -> bool:
    if shape_a != shape_b:
        return False
    for field in ("spacing", "origin"):
        va, vb = a.get(field), b.get(field)
        if va is None or vb is None:
            if field == "origin" and va is None and vb is None:
                continue  # no origin on either: same frame assumed
            return False
        if not np.allclose(np.asarray(va, float), np.asarray(vb, float), rtol=0, atol=1e-3):
            return False
    return True


def _registration(ctx: StageContext) -> dict[str, Any] | None:
    """The committed baseline -> follow-up transform (``register`` summary), or None."""
    rec = ctx.store.stage_record(ctx.key, "register")
    if rec is None or rec.get("status") != "committed":
        return None
    return (rec.get("summary") or {}).get("transform")


def _apply_registration(transform: dict[str, Any], bl_labels: np.ndarray, battrs: dict[str, Any],
                        fu_shape: tuple[int, ...], fattrs: dict[str, Any]) -> np.ndarray:
    from petcohort.engine.segment.registration import apply_transform  # noqa: PLC0415
    from petcohort.engine.segment.rigid import Geometry, RigidTransform  # noqa: PLC0415

    return apply_transform(RigidTransform.from_dict(transform), bl_labels, moving_geom=Geometry.from_attrs(battrs),
                           fixed_shape=fu_shape, fixed_geom=Geometry.from_attrs(fattrs), label=True,
                           keep_labels=True)


@register_stage("track", requires=("threshold", "register"), needs_baseline=("threshold",), applies_to="followup",
                params=("quantify.connectivity", "tracking", "analysis.sources"))
def track_stage(ctx: StageContext) -> StageOutput:
    """Lesion matches (persisting/split/merged/vanished/new) per source (module docstring)."""
    base = require_baseline(ctx)
    battrs = ctx.store.study_attrs(base)
    conn = ctx.config.connectivity
    sources: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    transform = _registration(ctx)
    truth = _truth_pair(ctx, base)
    for src in study_sources(ctx):
        bsrc = baseline_source(ctx, src)
        if bsrc is None:
            skipped[src] = "NOT_ON_BASELINE"
            continue
        fu = study_lesion_labels(ctx.store, ctx.key, src, connectivity=conn)
        bl = study_lesion_labels(ctx.store, base, bsrc, connectivity=conn)
        (fu_lab, nfu), (bl_lab, nbl) = (fu.labels, fu.n), (bl.labels, bl.n)
        del fu, bl
        fu_vox = lesion_voxels(fu_lab)   # shared by the matching and the accuracy
        if transform is not None:
            bl_reg = _apply_registration(transform, bl_lab, battrs, fu_lab.shape, ctx.attrs)
            matches = match_lesions(bl_reg, nbl, fu_lab, nfu, spacing=ctx.spacing,
                                    max_distance_mm=ctx.config.tracking.max_distance_mm,
                                    overlap_min=ctx.config.tracking.overlap_min, fu_voxels=fu_vox)
            method = "registered"
        elif _same_grid(ctx.attrs, battrs, fu_lab.shape, bl_lab.shape):
            matches = match_lesions(bl_lab, nbl, fu_lab, nfu, spacing=ctx.spacing,
                                    max_distance_mm=ctx.config.tracking.max_distance_mm,
                                    overlap_min=ctx.config.tracking.overlap_min, fu_voxels=fu_vox)
            method = "overlap"
        else:
            bl_c = centroids_mm(bl_lab, nbl, spacing=battrs["spacing"], origin=battrs.get("origin") or (0, 0, 0))
            fu_c = centroids_mm(fu_lab, nfu, spacing=ctx.spacing, origin=ctx.attrs.get("origin") or (0, 0, 0))
            matches = match_centroids(bl_c, fu_c, max_distance_mm=ctx.config.tracking.max_distance_mm)
            method = "centroid"
        sources[src] = {"baseline_source": bsrc, "method": method, "n_baseline": nbl, "n_followup": nfu,
                        **summarise(matches)}
        if truth is not None:  # each lesion's truth id on its own scan (no resampling of either side)
            sources[src]["accuracy"] = tracking_accuracy(matches, lesion_truth_ids(bl_lab, nbl, truth[0]),
                                                         lesion_truth_ids(fu_lab, nfu, truth[1], fu_vox)).to_dict()
    summary: dict[str, Any] = {"sources": sources, "skipped": skipped}
    if truth is None:
        summary["accuracy_reason"] = "NO_TRUTH_IDS"
    return StageOutput(summary=summary)


def _truth_pair(ctx: StageContext, base: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``truth/lesion_ids`` of the baseline and the follow-up, or None unless both studies hold it."""
    if not (ctx.store.has_array(base, TRUTH_IDS) and ctx.store.has_array(ctx.key, TRUTH_IDS)):
        return None
    return ctx.store.read_array(base, TRUTH_IDS), ctx.store.read_array(ctx.key, TRUTH_IDS)
