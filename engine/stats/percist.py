"""Automated PERCIST 1.0: per-scan assessment and the response call.

Sources: Wahl RL, Jacene H, Kasamon Y, Lodge MA, "From RECIST to PERCIST:
evolving considerations for PET response criteria in solid tumors", J Nucl
Med 2009;50 Suppl 1:122S-150S (Table/appendix "PERCIST 1.0"); O JH, Lodge MA,
Wahl RL, "Practical PERCIST: a simplified guide to PET Response Criteria in
Solid Tumors 1.0", Radiology 2016;280:576-584. docs/methods.md "PERCIST 1.0".

Per scan (:func:`assess_scan`)
    * Reference: :func:`~petcohort.engine.kernels.reference.liver_reference`
      (3 cm right-lobe sphere, blood-pool fallback).
    * Measurability threshold (Wahl 2009): liver ``1.5 * mean + 2 * SD``;
      blood pool ``2.0 * mean + 2 * SD``. A lesion is measurable when its
      SULpeak >= threshold.
    * Target: the hottest measurable lesion (SULpeak). ``hottest``: the
      hottest lesion, measurable or not (the follow-up target: PERCIST
      measures the hottest lesion after treatment, not necessarily the same
      lesion and not necessarily above threshold).
    * Top 5: the up-to-5 hottest measurable lesions, at most 2 per organ;
      their SULpeak sum and TLG sum (TLG = MTV * SULmean, SUL*mL). A lesion
      without an organ assignment (``organ`` None, or ``"other"``: no organ
      mask claims it, :func:`organ_of_lesions`) counts in one shared group
      ``"unassigned"`` (docs/methods.md "PERCIST 1.0"), so the cap still applies
      to it; the call's evidence lists each top-5 lesion's group.

Call (:func:`percist_call`), first rule that applies:
    1. baseline without a measurable lesion -> ``category=None``,
       ``reason="PERCIST_BASELINE_NOT_MEASURABLE"`` (PERCIST needs a
       measurable baseline).
    2. a new FDG-avid lesion -> PMD, rule ``new_lesion``. ``new_lesions`` is
       a count (taken as avid) or the follow-up labels of the lesions that
       tracking found new; then only those with SULpeak above the follow-up
       reference mean count (Wahl: "new 18F-FDG-avid lesions"; at or below
       the reference mean is "background", the same boundary as CMR).
    3. every follow-up lesion at or below the follow-up reference mean (or no
       follow-up lesion) -> CMR, rule ``all_lesions_to_background`` (Wahl:
       "less than mean liver activity and indistinguishable from background";
       the SULpeak <= reference mean test is the automated proxy).
    4. follow-up hottest SULpeak vs baseline target: > +30 % and >= +0.8 SUL
       (docs/methods.md) -> PMD, rule ``sulpeak_up_30pct_0.8``.
    5. TLG of the follow-up top 5 (hottest, any lesion, <= 2 per organ) vs
       baseline top 5 (measurable): > +75 % -> PMD, rule ``tlg_up_75pct``
       (docs/methods.md). Wahl's extra clause "with no decline in SUL" is the
       option ``tlg_requires_no_sul_decline`` (off by default).
    6. SULpeak down > 30 % and >= 0.8 SUL (docs/methods.md; Wahl: "a minimum of
       30%", "at least 0.8 SUL units") -> PMR, rule ``sulpeak_down_30pct_0.8``.
    7. otherwise SMD, rule ``otherwise``.
Quality flags (Wahl 2009): reference means must agree within 20 % and within
0.3 SUL between scans (flag when either is exceeded); uptake times within 15
minutes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from petcohort.engine import backend
from petcohort.engine.errors import InputError
from petcohort.engine.kernels._validate import check_same_grid, check_spacing
from petcohort.engine.kernels.label import lesion_voxels
from petcohort.engine.kernels.lesions import lesion_organs
from petcohort.engine.kernels.reference import Reference, liver_reference
from petcohort.engine.kernels.sulpeak import lesion_peaks
from petcohort.engine.segment.threshold import PERCIST_LEVEL_FACTORS
from petcohort.engine.stats.delta import delta_percent

__all__ = ["LesionAssessment", "ScanAssessment", "PercistCall", "make_assessment", "assess_scan",
           "select_top", "percist_call", "avid_new_lesions", "threshold_for", "organ_of_lesions", "organ_group",
           "CATEGORIES", "UNASSIGNED"]

CATEGORIES = ("CMR", "PMR", "SMD", "PMD")
# (mean factor, SD factor) of the measurability threshold per reference source (Wahl 2009); shared with
# the PERCIST-adaptive threshold mask so both use the rule of the reference actually used.
_THRESHOLD = PERCIST_LEVEL_FACTORS
#: The shared per-organ group of lesions without an organ assignment (docs/methods.md "PERCIST 1.0").
UNASSIGNED = "unassigned"
_NO_ORGAN = (None, "other", UNASSIGNED)


@dataclass(frozen=True)
class LesionAssessment:
    """One lesion on one scan: label id, SULpeak, organ, volume (mL), SULmean, TLG (SUL*mL), measurable."""

    label: int
    sulpeak: float
    organ: str | None
    volume_ml: float
    tlg: float
    measurable: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ScanAssessment:
    """PERCIST view of one scan (see module docstring)."""

    reference: Reference
    threshold: float
    lesions: tuple[LesionAssessment, ...]
    target: LesionAssessment | None
    hottest: LesionAssessment | None
    top5: tuple[LesionAssessment, ...]
    sulpeak5: float
    tlg5: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference.to_dict(), "threshold": self.threshold,
            "lesions": [les.to_dict() for les in self.lesions],
            "target": self.target.label if self.target else None,
            "hottest": self.hottest.label if self.hottest else None,
            "top5": [les.label for les in self.top5], "sulpeak5": self.sulpeak5, "tlg5": self.tlg5,
        }


@dataclass(frozen=True)
class PercistCall:
    """The PERCIST category (None when undecidable), the rule that decided, evidence and QC flags."""

    category: str | None
    reason: str | None
    rule: str | None
    evidence: dict[str, Any] = field(default_factory=dict)
    qc_flags: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["qc_flags"] = list(self.qc_flags)
        return d


def threshold_for(reference: Reference) -> float:
    """Measurability threshold (SUL) for ``reference`` (Wahl 2009)."""
    if reference.source not in _THRESHOLD:
        raise InputError("BAD_VALUE", f"reference.source must be one of {sorted(_THRESHOLD)}, "
                         f"got {reference.source!r}")
    a, b = _THRESHOLD[reference.source]
    return a * reference.mean + b * reference.sd


def organ_group(organ: str | None) -> str:
    """The per-organ cap group of a lesion: its organ, or :data:`UNASSIGNED` for None / ``"other"``."""
    return UNASSIGNED if organ in _NO_ORGAN else str(organ)


def select_top(lesions: Sequence[LesionAssessment], *, n: int = 5, per_organ: int = 2) -> tuple[LesionAssessment, ...]:
    """The ``n`` hottest lesions (SULpeak, ties by label), at most ``per_organ`` per organ group.

    Lesions without an organ assignment share the group :data:`UNASSIGNED`
    (:func:`organ_group`), so the cap applies to them too.
    """
    chosen: list[LesionAssessment] = []
    per: dict[str, int] = {}
    for les in sorted(lesions, key=lambda les: (-les.sulpeak, les.label)):
        if len(chosen) == n:
            break
        group = organ_group(les.organ)
        if per.get(group, 0) >= per_organ:
            continue
        per[group] = per.get(group, 0) + 1
        chosen.append(les)
    return tuple(chosen)


def make_assessment(reference: Reference, lesions: Sequence[LesionAssessment]) -> ScanAssessment:
    """Build a :class:`ScanAssessment` from a reference and per-lesion values.

    ``measurable`` on the input lesions is recomputed from the threshold.
    """
    thr = threshold_for(reference)
    marked = tuple(sorted((LesionAssessment(les.label, float(les.sulpeak), les.organ, float(les.volume_ml),
                                            float(les.tlg), bool(les.sulpeak >= thr)) for les in lesions),
                          key=lambda les: les.label))
    measurable = [les for les in marked if les.measurable]
    top = select_top(measurable)
    hot = select_top(marked, n=1, per_organ=1)
    return ScanAssessment(reference, float(thr), marked, top[0] if top else None, hot[0] if hot else None,
                          top, float(sum(les.sulpeak for les in top)), float(sum(les.tlg for les in top)))


def organ_of_lesions(labels: Any, n: int, *, bone: Any = None, liver: Any = None,
                     voxels: tuple[np.ndarray, np.ndarray] | None = None) -> dict[int, str]:
    """Organ of each lesion by majority of its voxels: ``bone``, ``liver`` or ``other`` (ties in that order).

    The rule quantify uses for the lesion ``organ``
    (:func:`petcohort.engine.kernels.lesions.lesion_organs`), so both always agree.
    ``voxels``: :func:`~petcohort.engine.kernels.label.lesion_voxels` of ``labels``
    when the caller has it already.
    """
    labels = backend.to_numpy(labels)
    # lesion voxels only: the same counts as over the whole volume
    idx, values = lesion_voxels(labels) if voxels is None else voxels
    at = {}
    for name, mask in (("bone", bone), ("liver", liver)):
        if mask is not None:
            mask = backend.to_numpy(mask)
            check_same_grid(labels, mask, names=("labels", name))
            at[name] = mask.reshape(-1)[idx]
    return lesion_organs(values, n, **at)


def assess_scan(sul: Any, labels: Any, n: int, *, spacing: Sequence[float], liver: Any, aorta: Any = None,
                lesion_ids: Sequence[int] | None = None, organ_of: Mapping[int, str] | None = None,
                radius_mm: float = 6.2035, sphere_mm: float = 30.0,
                sulpeaks: Sequence[float | None] | None = None,
                voxels: tuple[np.ndarray, np.ndarray] | None = None) -> ScanAssessment:
    """PERCIST assessment of one scan.

    Parameters
    ----------
    sul : (Z, Y, X) ndarray of float, SUL
    labels : (Z, Y, X) ndarray of int, same grid
        Lesion labels 0..n (connected components of the lesion mask).
    n : int
        Number of labels.
    spacing : (sz, sy, sx) mm
    liver, aorta : (Z, Y, X) ndarray or None
        Organ masks for the reference (liver sphere, blood-pool fallback);
        ``liver`` may be its :func:`~petcohort.engine.kernels.reference.liver_site`
        (built with ``spacing`` and ``sphere_mm``), shared by the lesion sets of one scan.
    lesion_ids : sequence of int or None
        Labels to assess (default: all 1..n).
    organ_of : mapping label -> organ name, or None (organ unknown)
    radius_mm : float
        SULpeak sphere radius (mm).
    sphere_mm : float
        Liver reference sphere diameter (mm).
    sulpeaks : sequence of float or None, optional
        SULpeak of each label 1..n (radius ``radius_mm``; None: no peak) computed
        by the caller, e.g. the ``quantify`` stage's (the SUVbw peak times the
        study's SUL factor: the same number, the sphere mean being linear);
        default: the global peaks of :func:`~petcohort.engine.kernels.sulpeak.lesion_peaks`
        of ``sul``.
    voxels : (indices, labels), optional
        :func:`~petcohort.engine.kernels.label.lesion_voxels` of ``labels``
        when the caller has it already (e.g. from :func:`organ_of_lesions`).

    Returns
    -------
    ScanAssessment

    Raises
    ------
    InputError
        ``NO_REFERENCE`` (no liver/blood-pool region), ``BAD_VALUE`` (a
        lesion id outside 1..n), and the kernel input checks.
    """
    spacing = check_spacing(spacing)
    sul = backend.to_numpy(sul)
    labels = backend.to_numpy(labels)
    check_same_grid(sul, labels, names=("sul", "labels"))
    ids = list(range(1, n + 1)) if lesion_ids is None else [int(i) for i in lesion_ids]
    bad = [i for i in ids if not 1 <= i <= n]
    if bad:
        raise InputError("BAD_VALUE", f"lesion_ids must lie in 1..{n}, got {bad}")
    reference = liver_reference(sul, liver, spacing=spacing, lesions=labels, aorta=aorta, diameter_mm=sphere_mm)
    if sulpeaks is None:
        sulpeaks = [p.global_peak for p in lesion_peaks(sul, labels, n, spacing=spacing, radius_mm=radius_mm)]
    elif len(sulpeaks) != n:
        raise InputError("BAD_VALUE", f"sulpeaks holds {len(sulpeaks)} lesions, labels {n}")
    voxel_ml = float(np.prod(spacing)) / 1000.0
    # lesion voxels only, in C order: each label's float64 sum accumulates as over the whole volume,
    # without a whole-volume float64 copy of the image
    idx, values = lesion_voxels(labels) if voxels is None else voxels
    sums = np.bincount(values, weights=sul.reshape(-1)[idx].astype(np.float64), minlength=n + 1)
    counts = np.bincount(values, minlength=n + 1)
    lesions = []
    for i in ids:
        if counts[i] == 0 or sulpeaks[i - 1] is None:
            continue  # an empty label is not a lesion
        volume = counts[i] * voxel_ml
        lesions.append(LesionAssessment(i, float(sulpeaks[i - 1]), (organ_of or {}).get(i),
                                        float(volume), float(volume * sums[i] / counts[i])))
    return make_assessment(reference, lesions)


def _qc(baseline: ScanAssessment, followup: ScanAssessment, uptake_min: tuple[float | None, float | None],
        rel_tol: float, abs_tol: float, uptake_tol: float) -> list[str]:
    flags = []
    rb, rf = baseline.reference, followup.reference
    if rb.source != rf.source:
        flags.append("REFERENCE_SOURCE_DIFFERS")
    else:
        diff = abs(rf.mean - rb.mean)
        rel = diff / rb.mean if rb.mean > 0 else float("inf")
        if rel > rel_tol or diff > abs_tol:
            flags.append(f"{rb.source.upper()}_REFERENCE_UNSTABLE")
    ub, uf = uptake_min
    if ub is None or uf is None:
        flags.append("UPTAKE_TIME_UNKNOWN")
    elif abs(float(uf) - float(ub)) > uptake_tol:
        flags.append("UPTAKE_TIME_DIFFERS")
    return flags


def avid_new_lesions(followup: ScanAssessment, labels: Sequence[int]) -> tuple[list[int], list[int]]:
    """Split new follow-up lesion ``labels`` into (avid, not avid): SULpeak above the reference mean or not.

    Labels not assessed on ``followup`` raise ``InputError`` ``BAD_VALUE``.
    """
    peaks = {les.label: les.sulpeak for les in followup.lesions}
    missing = [int(i) for i in labels if int(i) not in peaks]
    if missing:
        raise InputError("BAD_VALUE", f"new_lesions holds labels {missing} not assessed on the follow-up "
                                      f"(assessed: {sorted(peaks)})")
    avid = sorted(int(i) for i in labels if peaks[int(i)] > followup.reference.mean)
    return avid, sorted(int(i) for i in labels if int(i) not in avid)


def percist_call(baseline: ScanAssessment, followup: ScanAssessment, *, new_lesions: int | Sequence[int],
                 uptake_min: tuple[float | None, float | None] = (None, None),
                 liver_tolerance: tuple[float, float] = (0.20, 0.3), uptake_tolerance_min: float = 15.0,
                 pct_change: float = 30.0, abs_change: float = 0.8, tlg_increase_pct: float = 75.0,
                 tlg_requires_no_sul_decline: bool = False) -> PercistCall:
    """PERCIST 1.0 category of a follow-up scan against its baseline.

    Parameters
    ----------
    baseline, followup : ScanAssessment
    new_lesions : int or sequence of int
        Follow-up lesions with no baseline counterpart (from lesion tracking):
        a count of FDG-avid new lesions, or their follow-up labels (filtered
        by :func:`avid_new_lesions`).
    uptake_min : (float or None, float or None)
        Uptake times (minutes) of baseline and follow-up, for the QC flag.
    liver_tolerance : (float, float)
        Allowed relative and absolute (SUL) change of the reference mean.
    uptake_tolerance_min : float
        Allowed uptake-time difference (minutes).
    pct_change, abs_change, tlg_increase_pct : float
        PERCIST cut-offs (30 %, 0.8 SUL, 75 %).
    tlg_requires_no_sul_decline : bool
        Apply Wahl's "with no decline in SUL" clause to the TLG rule.

    Returns
    -------
    PercistCall
        ``category`` in CMR/PMR/SMD/PMD, or None with ``reason``; ``rule`` names
        the deciding rule (module docstring); ``evidence`` is JSON-serialisable.

    Raises
    ------
    InputError ``BAD_VALUE`` when ``new_lesions`` is neither a non-negative
    integer nor a sequence of assessed follow-up labels.
    """
    new_labels: list[int] | None = None
    not_avid: list[int] = []
    if isinstance(new_lesions, (list, tuple, np.ndarray)):
        new_labels, not_avid = avid_new_lesions(followup, new_lesions)
        new_lesions = len(new_labels)
    elif isinstance(new_lesions, bool) or not isinstance(new_lesions, (int, np.integer)) or new_lesions < 0:
        raise InputError("BAD_VALUE", f"new_lesions must be a non-negative integer or a sequence of follow-up "
                                      f"labels, got {new_lesions!r}")
    flags = _qc(baseline, followup, uptake_min, liver_tolerance[0], liver_tolerance[1], uptake_tolerance_min)
    bt, ft = baseline.target, followup.hottest
    fu_top = select_top(followup.lesions)
    tlg5_fu = float(sum(les.tlg for les in fu_top))
    evidence: dict[str, Any] = {
        "baseline_reference": baseline.reference.to_dict(), "followup_reference": followup.reference.to_dict(),
        "baseline_threshold": baseline.threshold, "followup_threshold": followup.threshold,
        "baseline_target": bt.to_dict() if bt else None, "followup_target": ft.to_dict() if ft else None,
        "new_lesions": int(new_lesions), "new_lesion_labels": new_labels, "new_not_avid_labels": not_avid,
        "baseline_top5": [les.label for les in baseline.top5], "followup_top5": [les.label for les in fu_top],
        # the organ group of each top-5 lesion (same order): lesions without an organ share "unassigned"
        "baseline_top5_groups": [organ_group(les.organ) for les in baseline.top5],
        "followup_top5_groups": [organ_group(les.organ) for les in fu_top],
        "per_organ_cap": f"at most 2 per organ; lesions without an organ (None or 'other') share the group "
                         f"{UNASSIGNED!r}",
        "tlg5_baseline": baseline.tlg5, "tlg5_followup": tlg5_fu,
        "sulpeak5_baseline": baseline.sulpeak5, "sulpeak5_followup": float(sum(les.sulpeak for les in fu_top)),
        "sulpeak_delta_abs": None, "sulpeak_delta_pct": None, "tlg5_delta_pct": None,
        "uptake_min": list(uptake_min),
    }

    def call(category: str | None, rule: str | None, reason: str | None = None) -> PercistCall:
        return PercistCall(category, reason, rule, evidence, tuple(flags))

    if bt is None or bt.sulpeak <= 0:
        return call(None, None, "PERCIST_BASELINE_NOT_MEASURABLE")
    fu_peak = ft.sulpeak if ft is not None else None
    if fu_peak is not None:
        evidence["sulpeak_delta_abs"] = fu_peak - bt.sulpeak
        evidence["sulpeak_delta_pct"] = delta_percent(bt.sulpeak, fu_peak).value
    evidence["tlg5_delta_pct"] = delta_percent(baseline.tlg5, tlg5_fu).value
    if new_lesions > 0:
        return call("PMD", "new_lesion")
    if all(les.sulpeak <= followup.reference.mean for les in followup.lesions):
        return call("CMR", "all_lesions_to_background")
    d_abs, d_pct = evidence["sulpeak_delta_abs"], evidence["sulpeak_delta_pct"]
    if d_pct > pct_change and d_abs >= abs_change:
        return call("PMD", "sulpeak_up_30pct_0.8")
    tlg_pct = evidence["tlg5_delta_pct"]
    if tlg_pct is not None and tlg_pct > tlg_increase_pct and (d_abs >= 0 or not tlg_requires_no_sul_decline):
        return call("PMD", "tlg_up_75pct")
    if d_pct < -pct_change and d_abs <= -abs_change:
        return call("PMR", "sulpeak_down_30pct_0.8")
    return call("SMD", "otherwise")
