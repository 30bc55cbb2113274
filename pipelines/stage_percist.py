"""Stage ``percist``: automated PERCIST 1.0 call of a follow-up against its baseline.

For every source in the follow-up's ``track`` record, both studies are
assessed with :func:`petcohort.engine.stats.percist.assess_scan` on SUL
(``pet * sul_per_suvbw``; a study without the factor fails the stage with
``SUL_UNAVAILABLE``): liver reference sphere away from that source's lesions
(``organs/liver``; blood-pool fallback on ``organs/aorta``), SULpeak with
``config.radius_mm``, lesion organs by majority of voxels in
``organs/bone``/``organs/liver``. Each lesion's SULpeak is the one the study's
``quantify`` record holds (one number per lesion in every table); when that
record does not hold the source with the same lesions, it is computed here the
same way (:func:`petcohort.engine.kernels.lesions.sulpeak`). New lesions are the
``new`` matches of the track record (split fragments are not new) that are
FDG-avid (SULpeak above the follow-up reference mean,
:func:`~petcohort.engine.stats.percist.avid_new_lesions`). Uptake times
come from the ``uptake_min`` study attrs. A source whose reference cannot be placed gets
``category=None`` with that reason (e.g. ``NO_REFERENCE``).

Device: peaks computed here (see above) run on a GPU worker's device
(:func:`petcohort.engine.backend.stage_device`; each study's PET moved once, the
labels per source); the reference sphere, sums and the call stay on the host. A
device out of memory reruns the peaks on the CPU; the summary then records
``device`` and any ``device_fallback``.

Summary: ``{"sources": {src: {"category", "reason", "rule", "evidence",
"qc_flags", "baseline_source"}}}``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from petcohort.engine import backend
from petcohort.engine.errors import PetCohortError, StageError
from petcohort.engine.kernels.label import lesion_voxels
from petcohort.engine.kernels.lesions import sulpeak
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


def _quantified_lesions(ctx: StageContext, key: str) -> dict[str, list[dict[str, Any]]]:
    """The lesion rows per source of the study's committed ``quantify`` record, when its SULpeak
    sphere and lesion connectivity are this run's (else none: the peaks are computed here)."""
    rec = ctx.store.stage_record(key, "quantify") or {}
    params = rec.get("params") or {}
    if rec.get("status") != "committed" or params.get("quantify.radius_mm") != ctx.config.radius_mm \
            or params.get("quantify.connectivity") != ctx.config.connectivity:
        return {}
    return (rec.get("summary") or {}).get("lesions") or {}


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
        self._pet: dict[str, Any] = {}    # the PET (SUVbw) per device, read only when peaks are computed here
        self.device: dict[str, str] = {}  # run_on_device's info of the last peaks (``device``, fallback)
        self._quantified = _quantified_lesions(ctx, key)

    def _sulpeaks(self, src: str, labels: np.ndarray, n: int, voxels: tuple[np.ndarray, np.ndarray]
                  ) -> list[float | None]:
        """Each lesion's SULpeak: the ``quantify`` record's when it holds these lesions, else computed alike."""
        rows = self._quantified.get(src)
        if rows is not None and len(rows) == n:
            counts = np.bincount(voxels[1], minlength=n + 1)
            if all(row.get("lesion") == i and row.get("voxels") == counts[i] and row.get("sulpeak") is not None
                   for i, row in enumerate(rows, start=1)):
                return [float(row["sulpeak"]) for row in rows]
        factor = float(self.attrs["sul_per_suvbw"])   # present: _sul checked it

        def run(device: str) -> list[Any]:
            if device not in self._pet:
                pet = self.ctx.store.read_array(self.key, "pet")
                self._pet = {device: pet if device == "cpu" else backend.to_device(pet, device)}
            if device == "cpu":
                return lesion_peaks(self._pet[device], labels, n, spacing=self.spacing,
                                    radius_mm=self.ctx.config.radius_mm, voxels=voxels)
            return lesion_peaks(self._pet[device], backend.to_device(labels, device), n, spacing=self.spacing,
                                radius_mm=self.ctx.config.radius_mm)
        peaks, device = backend.run_on_device(run)
        self.device = {**self.device, **device}
        return [sulpeak(p.global_peak, factor) for p in peaks]   # quantify's formula

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
        return assess_scan(self.sul, labels, n, spacing=self.spacing, liver=self.liver_site,
                           aorta=self.organs["aorta"], organ_of=organs, radius_mm=ctx.config.radius_mm,
                           sphere_mm=ctx.config.percist_sphere_mm, sulpeaks=self._sulpeaks(src, labels, n, voxels),
                           voxels=voxels)


@register_stage("percist", requires=("track", "organs", "threshold", "quantify"),
                needs_baseline=("organs", "threshold", "quantify"),
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
