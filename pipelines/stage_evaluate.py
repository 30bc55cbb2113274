"""Stage ``evaluate``: segmentation quality of every source against the manual mask.

Summary ``{"sources": {src: metrics_dict}}`` for every non-manual ``seg/<src>``
against ``seg/manual`` (see :func:`petcohort.engine.kernels.metrics.evaluate`:
Dice, detection counts with the ``overlap`` rule, recall, precision, autoPET
FP/FN volumes; ``intersect``, ``truth_voxels`` and ``pred_voxels`` pool
into the cohort's global Dice with :func:`~petcohort.engine.kernels.metrics.global_dice`).
A study without ``seg/manual`` gives ``{"sources": {}, "reason": "NO_MANUAL_MASK"}``.
"""
from __future__ import annotations

from typing import Any

from petcohort.engine.kernels import metrics
from petcohort.pipelines.lesion_labels import instances_of
from petcohort.pipelines.stage_quantify import study_sources
from petcohort.pipelines.stages import StageContext, StageOutput, register_stage

__all__ = ["evaluate_stage"]


@register_stage("evaluate", requires=("threshold",),
                params=("quantify.connectivity", "evaluate.overlap", "analysis.sources"))
def evaluate_stage(ctx: StageContext) -> StageOutput:
    """Dice, detection and FP/FN volumes of every source against ``seg/manual``."""
    if not ctx.store.has_array(ctx.key, "seg/manual"):
        return StageOutput(summary={"sources": {}, "reason": "NO_MANUAL_MASK"})
    truth = ctx.store.read_array(ctx.key, "seg/manual")
    truth_instances = instances_of(ctx.store, ctx.key, "manual")
    out: dict[str, dict[str, Any]] = {}
    for src in study_sources(ctx):
        if src == "manual":
            continue
        out[src] = metrics.evaluate(truth, ctx.store.read_array(ctx.key, f"seg/{src}"), spacing=ctx.spacing,
                                    connectivity=ctx.config.connectivity, overlap=ctx.config.overlap,
                                    truth_instances=truth_instances,
                                    pred_instances=instances_of(ctx.store, ctx.key, src))
    return StageOutput(summary={"sources": out})
