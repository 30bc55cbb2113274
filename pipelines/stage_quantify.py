"""Stage ``quantify``: biomarkers of one study per segmentation source.

Summary: ``{"sources": {src: study_dict}, "lesions": {src: [lesion
dicts]}}`` for every ``seg/<src>`` of the study (or ``config.sources``; the
manual mask is always included when present), with the keys of
:func:`petcohort.engine.kernels.lesions.quantify`. SULpeak uses the study's
``sul_per_suvbw`` attr (None -> ``sulpeak_reason = SUL_UNAVAILABLE``); PBI/PLI
use ``organs/bone`` and ``organs/liver`` when present. A source with an
instance map (``seg/<src>_instances``) has one lesion per segment/ROI (split
into connected parts); its lesion rows carry ``segment`` (instance id),
``segment_number`` and ``segment_label``.

Device: on a GPU worker (:func:`petcohort.engine.backend.stage_device`) the
study's arrays go to the device once per task and the kernels (labelling,
SULpeak) run there; only numbers come back. The summary then says
``device: "cuda"``; after a device out-of-memory the study is quantified
again on the CPU and the summary says ``device: "cpu"``,
``device_fallback: "GPU_OUT_OF_MEMORY"``. CPU workers: numpy, no ``device`` key.
"""
from __future__ import annotations

from typing import Any

from petcohort.engine import backend
from petcohort.engine.kernels import lesions
from petcohort.pipelines.lesion_labels import instances_of, is_instances_array, segment_table
from petcohort.pipelines.stages import StageContext, StageOutput, register_stage

__all__ = ["quantify_stage", "study_sources"]


def study_sources(ctx: StageContext) -> list[str]:
    """Segmentation sources of the study to process (``seg/<src>`` present), sorted."""
    present = sorted(n.split("/", 1)[1] for n in ctx.store.array_names(ctx.key)
                     if n.startswith("seg/") and not is_instances_array(n))
    if ctx.config.sources is None:
        return present
    wanted = set(ctx.config.sources) | {"manual"}
    return [s for s in present if s in wanted]


def _organ(ctx: StageContext, name: str) -> Any:
    """``organs/<name>`` as a boolean mask (held through the stage: 1 byte a voxel, no per-source copy), or None."""
    return ctx.store.read_array(ctx.key, f"organs/{name}") != 0 if ctx.store.has_array(ctx.key, f"organs/{name}") \
        else None


@register_stage("quantify", requires=("organs", "threshold"), params=("quantify.connectivity", "quantify.radius_mm",
                                                                      "analysis.sources"))
def quantify_stage(ctx: StageContext) -> StageOutput:
    """Per-study and per-lesion biomarkers for every segmentation source."""
    host = {"pet": ctx.store.read_array(ctx.key, "pet"), "bone": _organ(ctx, "bone"), "liver": _organ(ctx, "liver")}
    (studies, lesion_rows), device = backend.run_on_device(lambda dev: _quantify_sources(ctx, host, dev))
    summary: dict[str, Any] = {"sources": studies, "lesions": lesion_rows, **device}
    if ctx.attrs.get("sul_per_suvbw") is None:
        summary["sul_reason"] = ctx.attrs.get("sul_reason") or "SUL_UNAVAILABLE"
    return StageOutput(summary=summary)


def _quantify_sources(ctx: StageContext, host: dict[str, Any], device: str
                      ) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Quantify every source with the study arrays on ``device`` (moved once; numbers come back)."""
    put = backend.mover(device)
    pet, bone, liver = put(host["pet"]), put(host["bone"]), put(host["liver"])
    studies: dict[str, dict[str, Any]] = {}
    lesion_rows: dict[str, list[dict[str, Any]]] = {}
    for src in study_sources(ctx):
        q = lesions.quantify(pet, put(ctx.store.read_array(ctx.key, f"seg/{src}")), spacing=ctx.spacing,
                             connectivity=ctx.config.connectivity, radius_mm=ctx.config.radius_mm,
                             bone=bone, liver=liver, sul_per_suvbw=ctx.attrs.get("sul_per_suvbw"),
                             origin=ctx.attrs.get("origin"), instances=put(instances_of(ctx.store, ctx.key, src)))
        studies[src] = q.study
        segments = segment_table(ctx.attrs, src)
        for row in q.lesions:  # the segment/ROI each lesion came from (instance masks only)
            if "segment" in row:
                seg = segments.get(row["segment"], {})
                row["segment_number"], row["segment_label"] = seg.get("number"), seg.get("label")
        lesion_rows[src] = q.lesions
        del q  # its label map (4 bytes per voxel) would otherwise live on through the next source's labelling
    return studies, lesion_rows
