"""Stage ``register``: the baseline PET rigidly registered onto each follow-up's grid.

docs/methods.md "Registration". Writes ``reg/baseline_pet`` (linear) and, when the
baseline has a manual mask, ``reg/baseline_mask`` (label interpolation) on
the follow-up grid. The summary holds the transform parameters (so any other
baseline mask, e.g. U-Net_BL's, can be mapped later with the same transform),
the QC correlation before and after, and ``mask_source``. An implausible
registration fails the study-stage with ``REGISTRATION_IMPLAUSIBLE`` (the
message carries the QC), so U-Net_FU does not run on a misaligned baseline.

Options: ``registration.seed`` of the run configuration (recorded in the summary). It is the
stage's only param, so changing an nnU-Net option never redoes a registration.

Schedule: :data:`SCHEDULE` (``"fast"``: whole-body PETs are block-averaged
before ANTs, see :func:`petcohort.engine.segment.registration.default_schedule`),
recorded in the summary as ``schedule``.
"""
from __future__ import annotations


from petcohort.engine.errors import StageError
from petcohort.engine.segment.registration import register_rigid
from petcohort.engine.segment.rigid import Geometry
from petcohort.pipelines.stages import StageContext, StageOutput, register_stage

__all__ = ["SCHEDULE", "register_stage_fn"]

#: registration schedule of the stage (engine/segment/reg_schedule.py ``SCHEDULES``).
SCHEDULE = "fast"


@register_stage("register", applies_to="followup", params=("registration.seed",))
def register_stage_fn(ctx: StageContext) -> StageOutput:
    """Register the patient's baseline PET onto this follow-up (see module docstring)."""
    if ctx.baseline_key is None:
        raise StageError("NO_BASELINE", f"follow-up {ctx.key!r} has no baseline study in the store")
    store, base = ctx.store, ctx.baseline_key
    base_attrs = store.study_attrs(base)
    manual = store.read_array(base, "seg/manual") if store.has_array(base, "seg/manual") else None
    res = register_rigid(store.read_array(ctx.key, "pet"), Geometry.from_attrs(ctx.attrs),
                         store.read_array(base, "pet"), Geometry.from_attrs(base_attrs),
                         moving_mask=manual, seed=ctx.config.registration.seed, schedule=SCHEDULE)
    if res.flagged:
        raise StageError("REGISTRATION_IMPLAUSIBLE",
                         f"baseline -> follow-up registration rejected: {'; '.join(res.problems)} "
                         f"(correlation before {res.corr_before:.3f}, after {res.corr_after:.3f})")
    arrays = {"reg/baseline_pet": res.pet}
    summary = {**res.summary(), "baseline": base, "seed": ctx.config.registration.seed, "schedule": SCHEDULE,
               "mask_source": "manual" if manual is not None else None}
    if res.mask is not None:
        arrays["reg/baseline_mask"] = res.mask
    else:
        summary["mask_reason"] = "NO_MANUAL_MASK"
    return StageOutput(arrays=arrays, summary=summary)
