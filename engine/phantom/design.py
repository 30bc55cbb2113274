"""Cohort design: sites and scanners, patients, visits, and lesion trajectories.

Everything random is drawn from numpy Generators seeded by
``SeedSequence(seed, spawn_key=(patient, stream, ...))``, which is exactly
the ``n``-th child of ``SeedSequence(seed).spawn(...)``: a patient's design
and images depend on the seed and the patient's index only, never on how
many patients are generated.

Designed response (relative to baseline, PERCIST 1.0 categories) is cycled
over the patients of each site in the order PMR, PMD, CMR, SMD, so all four
occur and responders (CMR/PMR) and non-responders (SMD/PMD) are balanced.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .anatomy import build_anatomy
from .body import Body
from .lesions import ORGAN_WEIGHTS, Lesion, LesionState, draw_lesion, draw_lesions
from .tissues import T, draw_physiology

__all__ = [
    "CATEGORIES",
    "MAX_SITES",
    "SCANNERS",
    "PatientDesign",
    "Scanner",
    "VisitDesign",
    "design_patient",
    "stream",
]

MAX_SITES = 2
CATEGORIES = ("PMR", "PMD", "CMR", "SMD")


@dataclass(frozen=True)
class Scanner:
    """One PET/CT scanner.

    ``spacing`` is (sz, sy, sx) mm; ``fwhm_mm`` the PSF; ``cov`` the per-voxel
    liver CoV at BMI 22. The GE Discovery's native 2.73 mm in-plane pixels are
    coarsened to 3.65 mm (a 192 matrix over 70 cm) to keep demo studies small.
    """

    name: str
    site: str
    manufacturer: str
    model: str
    spacing: tuple[float, float, float]
    fwhm_mm: float
    cov: float


SCANNERS: dict[str, tuple[Scanner, Scanner]] = {
    "A": (Scanner("A-vereos", "A", "Philips", "Vereos", (4.0, 4.0, 4.0), 4.5, 0.10),
          Scanner("A-discovery", "A", "GE MEDICAL SYSTEMS", "Discovery 710", (3.27, 3.65, 3.65), 5.5, 0.13)),
    "B": (Scanner("B-biograph-mct", "B", "SIEMENS", "Biograph mCT", (3.0, 4.07, 4.07), 6.0, 0.12),
          Scanner("B-biograph-64", "B", "SIEMENS", "Biograph 64", (4.0, 4.07, 4.07), 6.5, 0.14)),
}


@dataclass(frozen=True)
class VisitDesign:
    """One PET/CT visit of a patient (timepoint 0 = baseline)."""

    timepoint: int
    days: int
    scanner: Scanner
    weight_kg: float
    dose_bq: float
    uptake_min: float
    designed: str | None  # PERCIST category vs baseline, None at baseline
    states: dict[int, LesionState]
    liver_scale: float
    heart_scale: float
    urine_scale: float
    bladder_fill: float
    ureter: tuple[bool, ...]
    offset: tuple[float, float, float]


@dataclass(frozen=True)
class PatientDesign:
    index: int
    source_id: str  # raw identifier (SYN-0001): only ever given to the store's pseudonymiser
    name: str
    site: str
    body: Body
    phys: dict
    lesions: list[Lesion]
    visits: list[VisitDesign] = field(default_factory=list)

    @property
    def lesion_by_id(self) -> dict[int, Lesion]:
        return {les.id: les for les in self.lesions}


def stream(seed: int, *key: int) -> np.random.Generator:
    """Generator of the child ``key`` of ``SeedSequence(seed)`` (same as ``.spawn`` children)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=tuple(key))))


def _background(phys: dict, organ: str) -> float:
    code = {"bone": T.RED_MARROW, "liver": T.LIVER, "lung": T.LUNG, "node": T.MUSCLE}[organ]
    return float(phys["suv"][code])


def _follow_up(rng, cat: str, prev: dict[int, LesionState], base: dict[int, LesionState],
               lesions: dict[int, Lesion], phys: dict) -> dict[int, LesionState]:
    """Lesion states at a follow-up of designed category ``cat`` (vs baseline)."""
    out: dict[int, LesionState] = {}
    if cat == "CMR":  # every lesion gone to background
        return {lid: LesionState(0.0, 0.0) for lid in prev}
    if cat == "PMR":
        g = rng.uniform(0.25, 0.55)
        liver = float(phys["suv"][T.LIVER])
        for lid, st in prev.items():
            les, b = lesions[lid], base.get(lid, st)
            bg = _background(phys, les.organ)
            if lid == 1 and st.present:
                # the dominant lesion stays measurably above the liver: a partial, not complete, response
                suv = min(max(b.suv * g, 1.8 * liver), 0.6 * b.suv, st.suv)
                out[lid] = LesionState(st.size * rng.uniform(0.7, 0.9), suv)
            elif not st.present or rng.random() < (0.5 if les.diameter_mm < 12 else 0.25):
                out[lid] = LesionState(0.0, 0.0)  # vanished
            elif rng.random() < 0.35:  # faint: contrast close to background
                out[lid] = LesionState(st.size * rng.uniform(0.6, 0.9), bg * rng.uniform(1.1, 1.3))
            else:
                suv = max(min(b.suv * g * rng.uniform(0.8, 1.0), st.suv), bg * 1.1)
                out[lid] = LesionState(st.size * rng.uniform(0.6, 0.9), suv)
        return out
    if cat == "SMD":
        g = rng.uniform(0.92, 1.08)
        for lid, st in prev.items():
            b = base.get(lid, st)
            out[lid] = LesionState(b.size * rng.uniform(0.94, 1.06) if b.present else 0.0,
                                   b.suv * g * rng.uniform(0.96, 1.04))
        return out
    # PMD: rising uptake and growth, or new lesions, or both
    hot = rng.random() < 0.6
    for lid, st in prev.items():
        if not st.present:
            out[lid] = st
            continue
        f_suv = rng.uniform(1.45, 2.0) if hot else rng.uniform(0.97, 1.12)
        f_size = rng.uniform(1.1, 1.45) if hot else rng.uniform(1.0, 1.15)
        out[lid] = LesionState(st.size * f_size, min(st.suv * f_suv, 20.0))
    return out


def _new_lesions(rng, lesions: list[Lesion], hosts: dict, visit: int, count: int,
                 scale: float) -> list[Lesion]:
    """New lesions of a progression: in bones not yet involved, or in the liver."""
    used = tuple(sorted({les.site for les in lesions if les.organ == "bone"}))
    out: list[Lesion] = []
    for _ in range(count):
        organ = "liver" if rng.random() < 0.35 else "bone"
        les = draw_lesion(rng, hosts, len(lesions) + len(out) + 1, organ=organ, exclude_sites=used,
                          first_visit=visit, placed=lesions + out, scale=scale)
        if les is not None:
            out.append(les)
    return out


def _visit_conditions(rng, weight: float, site: str, prev_scanner: Scanner | None) -> dict:
    """Scanner, dose, uptake time and physiological state of one visit."""
    pair = SCANNERS[site]
    if prev_scanner is None or rng.random() < 0.25:
        scanner = pair[int(rng.integers(2))]
    else:
        scanner = prev_scanner
    # 3-4 MBq/kg, within 150-400 MBq (FDG PET/CT practice)
    dose = float(np.clip(weight * rng.uniform(3.0, 4.0), 150.0, 400.0)) * 1e6
    return {"scanner": scanner, "dose_bq": round(dose, -4),
            "uptake_min": round(float(rng.uniform(50, 75)), 1),
            "liver_scale": float(rng.uniform(0.94, 1.06)),
            "heart_scale": float(np.exp(rng.normal(0.0, 0.35))),
            "urine_scale": float(rng.uniform(0.6, 1.4)), "bladder_fill": float(rng.uniform(0.4, 1.6)),
            "ureter": tuple(bool(v) for v in rng.random(6) < 0.4),
            # patient position on the couch differs a little between visits (mm)
            "offset": (float(rng.normal(0, 8)), float(rng.normal(0, 3)), float(rng.normal(0, 4)))}


def design_patient(seed: int, index: int, *, sites: int = 2, scale: float = 1.0) -> PatientDesign:
    """Design one patient: body, physiology, lesions, visits and responses.

    Parameters
    ----------
    seed : int  cohort seed
    index : int  patient index (0-based); site = ``index % sites``
    sites : int  number of sites (1..MAX_SITES)
    scale : float  rendering scale of the body (``fov_scale``)

    Returns
    -------
    PatientDesign
    """
    rng = stream(seed, index, 0)
    site_idx = index % sites
    site = "AB"[site_idx]
    cat1 = CATEGORIES[(index // sites + site_idx) % 4]
    sex = "M" if rng.random() < 0.12 else "F"
    if sex == "F":
        h = float(np.clip(rng.normal(1.64, 0.07), 1.50, 1.85))
        w = float(np.clip(rng.normal(70.0, 14.0), 45.0, 110.0))
    else:
        h = float(np.clip(rng.normal(1.76, 0.06), 1.60, 1.85))
        w = float(np.clip(rng.normal(82.0, 12.0), 55.0, 110.0))
    body = Body(round(h, 2), round(w, 1), sex, float(rng.uniform(0.93, 1.07)) * (1.06 if sex == "M" else 1.0),
                scale, rng.uniform(-1, 1, 16))
    phys = draw_physiology(rng)
    hosts = build_anatomy(body).hosts
    n = int(np.clip(np.rint(np.exp(rng.normal(np.log(7.0), 0.8))), 1, 60))
    if cat1 == "CMR":
        n = min(n, 6)  # complete responders tend to have a low burden
    u = rng.random()
    profile = {"bone": 1.0} if u < 0.35 else ({"liver": 0.6, "bone": 0.3, "node": 0.1} if u < 0.45
                                               else ORGAN_WEIGHTS)
    lesions = draw_lesions(rng, hosts, n, profile=profile, scale=scale)
    n_fu = 1 if rng.random() < 0.4 else 2
    cats = [cat1]
    if n_fu == 2:
        nxt = {"PMR": "CMR" if rng.random() < 0.35 else "PMR", "CMR": "CMR", "PMD": "PMD",
               "SMD": "PMD" if rng.random() < 0.3 else "SMD"}
        cats.append(nxt[cat1])
    d1 = int(np.clip(np.rint(np.exp(rng.normal(np.log(49.0), 0.25))), 28, 95))
    d2 = d1 + int(np.clip(np.rint(np.exp(rng.normal(np.log(36.0), 0.3))), 21, 75))
    days = [0, d1, d2][: n_fu + 1]
    visits: list[VisitDesign] = []
    weight, scanner = body.weight_kg, None
    states = {les.id: LesionState(1.0, les.suv) for les in lesions}
    base = dict(states)
    for t, day in enumerate(days):
        cat = None if t == 0 else cats[t - 1]
        if t > 0:
            by_id = {les.id: les for les in lesions}
            states = _follow_up(rng, cat, states, base, by_id, phys)
            if cat == "PMD" and (rng.random() < 0.6 or all(s.suv <= base[i].suv * 1.2
                                                             for i, s in states.items() if i in base)):
                new = _new_lesions(rng, lesions, hosts, t, int(rng.integers(1, 6)), scale)
                lesions = lesions + new
                states.update({les.id: LesionState(1.0, les.suv) for les in new})
            weight = round(weight * float(rng.uniform(0.95, 1.02) if cat == "PMD" else rng.uniform(0.98, 1.03)), 1)
        cond = _visit_conditions(rng, weight, site, scanner)
        scanner = cond["scanner"]
        visits.append(VisitDesign(t, day, weight_kg=weight, designed=cat, states=dict(states), **cond))
    return PatientDesign(index, f"SYN-{index + 1:04d}", f"SYNTHETIC^PATIENT{index + 1:04d}", site, body,
                         phys, lesions, visits)
