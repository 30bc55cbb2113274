"""Stage ``threshold``: classical threshold segmentations of one study.

Writes ``seg/threshold_suv25`` (SUVbw >= ``threshold_fixed``),
``seg/threshold_41pct`` (``threshold_relative`` of each hot region's SUVmax,
regions seeded at ``threshold_fixed``) and, when SUL and a reference region exist,
``seg/threshold_percist`` (SUL >= the PERCIST level of the reference actually
used, :func:`petcohort.engine.segment.threshold.percist_level`: 1.5 x liver
mean + 2 x liver SD, or 2.0 x blood-pool mean + 2 x blood-pool SD when the
reference of :func:`petcohort.engine.kernels.reference.liver_reference` fell
back to the descending aorta). The liver sphere keeps away from the liver's
lesions as :func:`petcohort.engine.segment.threshold.percist_liver_hot` marks
them (the whole liver's robust PERCIST level); the blood-pool cylinder from the
SUV 2.5 mask. The reference needs ``organs/liver`` or, without it, ``organs/aorta``
(blood pool); with neither the mask is skipped with ``NO_LIVER_MASK``. Brain, bladder,
kidneys and heart are excluded when ``organs/<name>`` masks exist (their
physiological FDG uptake is not disease).

Device: on a GPU worker (:func:`petcohort.engine.backend.stage_device`) the PET and
the exclusion mask are moved to the device once and the three masks (and the
41 % mask's labelling) are computed there; the reference sphere is placed on the
host (its statistics touch a few thousand voxels). The masks come back as numpy;
a device out of memory reruns the study on the CPU and records the fallback.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from petcohort.engine import backend
from petcohort.engine.errors import PetCohortError
from petcohort.engine.kernels.reference import liver_reference
from petcohort.engine.segment import threshold
from petcohort.pipelines.stages import StageContext, StageOutput, register_stage

__all__ = ["threshold_stage", "EXCLUDED_ORGANS"]

#: organs/<name> masks removed before thresholding (physiological uptake).
EXCLUDED_ORGANS = ("brain", "bladder", "kidneys", "heart")


def _exclusion(ctx: StageContext) -> tuple[np.ndarray | None, list[str]]:
    used: list[str] = []
    exclude: np.ndarray | None = None
    for organ in EXCLUDED_ORGANS:
        name = f"organs/{organ}"
        if ctx.store.has_array(ctx.key, name):
            m = ctx.store.read_array(ctx.key, name) != 0
            exclude = m if exclude is None else (exclude | m)
            used.append(organ)
    return exclude, used


def _stats(mask: np.ndarray, voxel_ml: float) -> dict[str, Any]:
    return {"voxels": int(np.count_nonzero(mask)), "volume_ml": int(np.count_nonzero(mask)) * voxel_ml}


@register_stage("threshold", requires=("organs",),
                params=("threshold.fixed", "threshold.relative", "quantify.connectivity", "percist.sphere_mm"))
def threshold_stage(ctx: StageContext) -> StageOutput:
    """Fixed, relative and PERCIST-adaptive threshold masks (see module docstring)."""
    pet = ctx.store.read_array(ctx.key, "pet")
    exclude, excluded = _exclusion(ctx)
    (arrays, summary), device = backend.run_on_device(lambda dev: _masks(ctx, pet, exclude, dev))
    return StageOutput(arrays=arrays, summary={"excluded_organs": excluded, **summary, **device})


def _avoided(source: str, hot: tuple[np.ndarray, float] | None) -> dict[str, Any]:
    """What the reference kept away from (summary ``reference_avoids``)."""
    if source != "liver" or hot is None:
        return {"rule": "SUV >= threshold.fixed"}
    a, b = threshold.PERCIST_LEVEL_FACTORS["liver"]
    return {"rule": f"SUL >= {a:g} x liver median + {b:g} x {threshold.MAD_TO_SD:g} x liver MAD",
            "level_sul": hot[1]}


def _masks(ctx: StageContext, pet_host: np.ndarray, exclude_host: np.ndarray | None, device: str
           ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The three masks with the PET on ``device`` (moved once); numpy masks and numbers come back.

    The PERCIST mask comes last: on the CPU its SUL is made in ``pet_host``'s own
    memory (the stage's copy read from the store, no longer needed), so the
    stage never holds a second whole-volume float image.
    """
    cfg = ctx.config
    put = backend.mover(device)
    pet, exclude = put(pet_host), put(exclude_host)
    voxel_ml = float(np.prod(ctx.spacing)) / 1000.0
    suv25_dev = threshold.fixed(pet, cfg.threshold_fixed, exclude=exclude)
    rel = backend.to_numpy(threshold.relative(pet, cfg.threshold_relative, connectivity=cfg.connectivity,
                                              seed_level=cfg.threshold_fixed, exclude=exclude, seeds=suv25_dev))
    suv25 = backend.to_numpy(suv25_dev)
    del suv25_dev
    arrays = {"seg/threshold_suv25": suv25}
    summary: dict[str, Any] = {"threshold_suv25": _stats(suv25, voxel_ml)}
    factor = ctx.attrs.get("sul_per_suvbw")
    has_liver = ctx.store.has_array(ctx.key, "organs/liver")
    has_aorta = ctx.store.has_array(ctx.key, "organs/aorta")
    if not (has_liver or has_aorta):  # no region for a reference (PERCIST: liver, else blood pool)
        summary["threshold_percist_reason"] = "NO_LIVER_MASK"
    elif factor is None:
        summary["threshold_percist_reason"] = "SUL_UNAVAILABLE"
    else:
        if device == "cpu" and pet_host.dtype == np.float32:   # the SUL in the PET's memory: same float32 products
            sul = np.multiply(pet_host, np.float32(factor), out=pet_host)
            del pet
        else:
            sul = pet_host.astype(np.float32) * np.float32(factor)
        liver = ctx.store.read_array(ctx.key, "organs/liver") if has_liver else None
        aorta = ctx.store.read_array(ctx.key, "organs/aorta") if has_aorta else None
        # what the reference keeps away from: the liver sphere, the liver's own lesions (percist_liver_hot);
        # the blood-pool cylinder (fallback), the SUV 2.5 mask
        hot = None if liver is None else threshold.percist_liver_hot(sul, liver, exclude=exclude_host)
        try:
            ref = liver_reference(sul, liver, spacing=ctx.spacing, lesions=suv25 if hot is None else hot[0],
                                  aorta=aorta, diameter_mm=cfg.percist_sphere_mm, aorta_lesions=suv25)
        except PetCohortError as exc:  # no room for a reference: skip this mask, keep the others
            summary["threshold_percist_reason"] = exc.reason
        else:
            # the level rule follows the reference actually used (docs/methods.md "PERCIST 1.0")
            level = threshold.percist_level(ref.mean, ref.sd, source=ref.source)
            if device != "cpu":  # the device's own SUL copy; the host one is freed first
                del sul
                sul = pet * np.float32(factor)
            percist = backend.to_numpy(threshold.percist_adaptive(sul, ref.mean, ref.sd, source=ref.source,
                                                                  exclude=exclude))
            arrays["seg/threshold_percist"] = percist
            a, b = threshold.PERCIST_LEVEL_FACTORS[ref.source]
            summary["threshold_percist"] = {**_stats(percist, voxel_ml), "level_sul": level,
                                            "level_rule": f"{a:g} x {ref.source} mean + {b:g} x SD",
                                            "reference": ref.to_dict(), "reference_avoids": _avoided(ref.source, hot)}
        del sul, liver, aorta, hot
    arrays["seg/threshold_41pct"] = rel
    summary["threshold_41pct"] = _stats(rel, voxel_ml)
    return arrays, summary
