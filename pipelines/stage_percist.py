"""Stage ``percist``: automated PERCIST 1.0 call of a follow-up against its baseline.

For every source in the follow-up's ``track`` record, both studies are
assessed with :func:`petcohort.engine.stats.percist.assess_scan` on SUL
(``pet * sul_per_suvbw``; a study without the factor fails the stage with
``SUL_UNAVAILABLE``): liver reference sphere away from that source's lesions
(``organs/liver``; blood-pool fallback on ``organs/aorta``), SULpeak with
``config.radius_mm``, lesion organs by majority of voxels in
``organs/bone``/``organs/liver``. New lesions are the ``new`` matches of
the track record (split fragments are not new) that are FDG-avid (SULpeak
above the follow-up reference mean,
:func:`~petcohort.engine.stats.percist.avid_new_lesions`). Uptake times
come from the ``uptake_min`` study attrs. A source whose reference cannot be placed gets
``category=None`` with that reason (e.g. ``NO_REFERENCE``).

Device: on a GPU worker (:func:`petcohort.engine.backend.stage_device`) every
lesion's SULpeak is computed there (each study's SUL moved once, the labels per
source); the reference sphere, sums and the call stay on the host. A device out
of memory reruns the peaks on the CPU; the summary records ``device`` and any
``device_fallback``.

Summary: ``{"sources": {src: {"category", "reason", "rule", "evidence",
"qc_flags", "baseline_source"}}}``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from petcohort.engine import backend
from petcohort.engine.errors import PetCohortError, StageError
from petcohort.engine.kernels.label import lesion_voxels
from petcohort.engine.kernels.reference import liver_site
from petcohort.engine.kernels.sulpeak import lesion_peaks
from petcohort.engine.stats.percist import assess_scan, organ_of_lesions, percist_call
from petcohort.pipelines.lesion_labels import study_lesion_labels
from petcohort.pipelines.stage_track import require_baseline
from petcohort.pipelines.stages import StageContext, StageOutput, register_stage

__all__ = ["percist_stage"]


def _sul(ctx: StageContext, key: str, attrs: dict[str, Any]) -> np.ndarray:
    factor = attrs.get("sul_per_suvbw")
    if factor is None:
        role = "baseline" if key != ctx.key else "follow-up"
        raise StageError("SUL_UNAVAILABLE", f"{role} study {key!r} has no sul_per_suvbw "
                                            f"(sul_reason={attrs.get('sul_reason')!r}); PERCIST needs SUL")
    return ctx.store.read_array(key, "pet").astype(np.float32) * np.float32(factor)


class _Study:
    """One study's SUL and organ masks, read once per stage, and its assessment per source (memoised).

    Every follow-up source is assessed against a baseline source, and several
    may share one (``nnunet_fu`` and ``nnunet_bl`` -> ``nnunet_bl``): each
    array is read, and each (study, source) assessed, once per stage run.
    """

    def __init__(self, ctx: StageContext, key: str, attrs: dict[str, Any]) -> None:
        self.ctx, self.key, self.attrs = ctx, key, attrs
        self.sul = _sul(ctx, key, attrs)
        self.organs = {name: self._read(f"organs/{name}") for name in ("liver", "bone", "aorta")}
        self.spacing = [float(s) for s in attrs["spacing"]]
        liver = self.organs["liver"]
        # the sphere placement's lesion-independent part, shared by the study's sources
        self.liver_site = None if liver is None else liver_site(liver, spacing=self.spacing,
                                                               diameter_mm=ctx.config.percist_sphere_mm)
        self._done: dict[str, Any] = {}
        self._sul_device: Any = None     # the SUL on the worker's device, moved once per study
        self.device: dict[str, str] = {}  # run_on_device's info of the last peaks (``device``, fallback)

    def _peaks(self, labels: np.ndarray, n: int, voxels: tuple[np.ndarray, np.ndarray]
               ) -> tuple[list[Any], dict[str, str]]:
        """Every lesion's SULpeak, on the worker's device when it has one (CPU after a device OOM)."""
        def run(device: str) -> list[Any]:
            if device == "cpu":
                return lesion_peaks(self.sul, labels, n, spacing=self.spacing, radius_mm=self.ctx.config.radius_mm,
                                    voxels=voxels)
            if self._sul_device is None:
                self._sul_device = backend.to_device(self.sul, device)
            return lesion_peaks(self._sul_device, backend.to_device(labels, device), n, spacing=self.spacing,
                                radius_mm=self.ctx.config.radius_mm)
        return backend.run_on_device(run)

    def _read(self, name: str) -> np.ndarray | None:
        store = self.ctx.store
        return store.read_array(self.key, name) if store.has_array(self.key, name) else None

    def assess(self, src: str):
        """:func:`assess_scan` of lesion source ``src`` (a PetCohortError is kept and raised again on reuse)."""
        if src not in self._done:
            try:
                self._done[src] = self._assess(src)
            except PetCohortError as exc:
                self._done[src] = exc
        out = self._done[src]
        if isinstance(out, PetCohortError):
            raise out
        return out

    def _assess(self, src: str):
        # the same labels as the track stage (same kernel, same connectivity)
        ctx, liver = self.ctx, self.organs["liver"]
        lesions = study_lesion_labels(ctx.store, self.key, src, connectivity=ctx.config.connectivity)
        labels, n = lesions.labels, lesions.n
        voxels = lesion_voxels(labels)   # shared by the organ assignment, the peaks and the lesion sums
        organs = organ_of_lesions(labels, n, bone=self.organs["bone"], liver=liver, voxels=voxels)
        peaks, device = self._peaks(labels, n, voxels)
        self.device = {**self.device, **device}
        return assess_scan(self.sul, labels, n, spacing=self.spacing, liver=self.liver_site,
                           aorta=self.organs["aorta"], organ_of=organs, radius_mm=ctx.config.radius_mm,
                           sphere_mm=ctx.config.percist_sphere_mm, peaks=peaks, voxels=voxels)


@register_stage("percist", requires=("track", "organs", "threshold"), needs_baseline=("organs", "threshold"),
                applies_to="followup",
                params=("quantify.connectivity", "quantify.radius_mm", "percist", "analysis.sources"))
def percist_stage(ctx: StageContext) -> StageOutput:
    """PERCIST category per segmentation source (module docstring)."""
    base = require_baseline(ctx)
    battrs = ctx.store.study_attrs(base)
    track = ctx.store.stage_record(ctx.key, "track")
    if track is None or track.get("status") != "committed":
        raise StageError("UPSTREAM_MISSING", f"study {ctx.key!r} has no committed 'track' record; run track first")
    studies = {"fu": _Study(ctx, ctx.key, ctx.attrs), "bl": _Study(ctx, base, battrs)}
    uptake = (battrs.get("uptake_min"), ctx.attrs.get("uptake_min"))
    out: dict[str, Any] = {}
    for src, rec in sorted((track.get("summary") or {}).get("sources", {}).items()):
        bsrc = rec["baseline_source"]
        try:
            bl = studies["bl"].assess(bsrc)
            fu = studies["fu"].assess(src)
        except PetCohortError as exc:  # e.g. NO_REFERENCE on one study: this source has no call
            out[src] = {"category": None, "reason": exc.reason, "rule": None, "evidence": {"message": exc.message},
                        "qc_flags": [], "baseline_source": bsrc}
            continue
        new = [m["followup_lesion"] for m in rec.get("matches") or [] if m.get("status") == "new"]
        call = percist_call(bl, fu, new_lesions=new, uptake_min=uptake, **ctx.config.percist.call_options())
        out[src] = {**call.to_dict(), "baseline_source": bsrc}
    device = {**studies["bl"].device, **studies["fu"].device}
    return StageOutput(summary={"sources": out, **device})
