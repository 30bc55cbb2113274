"""Tissue classes of the phantom and their FDG uptake (SUVbw) and CT numbers (HU).

Values follow published FDG PET/CT practice about 60 min after injection
(EANM FDG PET/CT guideline, Boellaard et al., EJNMMI 2015; PERCIST 1.0
reference organs, Wahl et al., J Nucl Med 2009): the ranges are drawn per
patient in :func:`draw_physiology` so that no two patients share a liver,
heart or bladder. Organ masks written
as ground truth are unions of these classes (:data:`ORGAN_CLASSES`).
"""
from __future__ import annotations

import numpy as np

__all__ = ["N_TISSUES", "ORGAN_CLASSES", "T", "draw_physiology", "tables"]


class T:
    """Tissue codes (uint8 values of the class map)."""

    AIR, FAT, MUSCLE, VISCERA, LUNG, CORTICAL, RED_MARROW, YELLOW_MARROW = range(8)
    LIVER, SPLEEN, GREY, WHITE, CEREBELLUM, MYOCARDIUM, BLOOD, KIDNEY = range(8, 16)
    COLLECTING, URETER, BLADDER, BOWEL, BREAST, TONSIL, CSF, DISC = range(16, 24)
    BRAINSTEM, AORTA = range(24, 26)


N_TISSUES = 26

# Ground-truth organ masks (contracts: organs/<name>): unions of classes.
ORGAN_CLASSES: dict[str, tuple[int, ...]] = {
    "bone": (T.CORTICAL, T.RED_MARROW, T.YELLOW_MARROW),
    "liver": (T.LIVER,),
    "aorta": (T.AORTA,),
    "brain": (T.GREY, T.WHITE, T.CEREBELLUM, T.BRAINSTEM),
    "bladder": (T.BLADDER,),
    "kidneys": (T.KIDNEY, T.COLLECTING),
    "heart": (T.MYOCARDIUM, T.BLOOD),
}

# (low, high) SUVbw per class: uniform draws per patient.
_SUV_RANGE = {
    T.AIR: (0.0, 0.0), T.FAT: (0.25, 0.45), T.MUSCLE: (0.6, 1.0), T.VISCERA: (0.9, 1.3),
    T.LUNG: (0.3, 0.6), T.CORTICAL: (0.3, 0.5), T.RED_MARROW: (1.2, 2.0),
    T.YELLOW_MARROW: (0.3, 0.5), T.SPLEEN: (1.4, 1.9), T.BLOOD: (1.5, 2.0),
    T.KIDNEY: (2.0, 3.5), T.COLLECTING: (5.0, 20.0), T.URETER: (3.0, 12.0),
    T.BLADDER: (12.0, 60.0), T.BOWEL: (1.0, 2.2), T.BREAST: (0.3, 0.6), T.TONSIL: (2.5, 4.5),
    T.CSF: (0.2, 0.4), T.DISC: (0.5, 0.8),
}
# (mean, sd) HU per class (unenhanced CT).
_HU = {
    T.AIR: (-1000, 0), T.FAT: (-100, 8), T.MUSCLE: (45, 5), T.VISCERA: (30, 6),
    T.LUNG: (-820, 30), T.CORTICAL: (950, 80), T.RED_MARROW: (250, 40),
    T.YELLOW_MARROW: (-40, 15), T.LIVER: (60, 5), T.SPLEEN: (48, 4), T.GREY: (38, 2),
    T.WHITE: (28, 2), T.CEREBELLUM: (36, 2), T.MYOCARDIUM: (45, 3), T.BLOOD: (40, 3),
    T.KIDNEY: (32, 3), T.COLLECTING: (8, 3), T.URETER: (8, 3), T.BLADDER: (8, 3),
    T.BOWEL: (20, 8), T.BREAST: (-60, 15), T.TONSIL: (45, 4), T.CSF: (8, 2), T.DISC: (80, 8),
    T.BRAINSTEM: (32, 2), T.AORTA: (40, 3),
}


def draw_physiology(rng: np.random.Generator) -> dict[str, float | np.ndarray]:
    """Per-patient tissue values.

    Returns
    -------
    dict
        ``suv``: (N_TISSUES,) float64 SUVbw per class; ``hu``: (N_TISSUES,)
        float64 HU per class. The liver is 1.9 +- 0.4 (normal, clipped to
        1.3-2.7); the grey matter 6-10; the myocardium 1-15 with a long
        low-uptake mass (fasting patients) and a hot minority.
    """
    suv = np.zeros(N_TISSUES)
    for code, (lo, hi) in _SUV_RANGE.items():
        suv[code] = rng.uniform(lo, hi)
    suv[T.LIVER] = float(np.clip(rng.normal(1.9, 0.3), 1.4, 2.6))
    suv[T.SPLEEN] = suv[T.LIVER] * rng.uniform(0.8, 0.95)
    suv[T.GREY] = rng.uniform(6.5, 10.0)
    suv[T.WHITE] = suv[T.GREY] * rng.uniform(0.35, 0.45)
    suv[T.CEREBELLUM] = suv[T.GREY] * rng.uniform(0.8, 0.95)
    suv[T.BRAINSTEM] = suv[T.GREY] * rng.uniform(0.45, 0.55)
    # Myocardium: log-uniform 1-15 so that both cold and very hot hearts occur.
    suv[T.MYOCARDIUM] = float(np.exp(rng.uniform(np.log(1.2), np.log(15.0))))
    suv[T.AORTA] = suv[T.BLOOD]
    # normal draws kept within 2 SD so every patient stays inside these HU ranges
    hu = np.array([_HU[c][0] + _HU[c][1] * float(np.clip(rng.normal(), -2.0, 2.0)) for c in range(N_TISSUES)])
    hu[T.AIR] = -1000.0
    hu[T.LIVER] = float(np.clip(hu[T.LIVER], 50.0, 70.0))
    return {"suv": suv, "hu": hu}


def tables(phys: dict, *, liver_scale: float = 1.0, heart_scale: float = 1.0,
           urine_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """SUV and HU lookup tables for one visit (visit-to-visit physiological change).

    Parameters
    ----------
    phys : dict
        Output of :func:`draw_physiology`.
    liver_scale, heart_scale, urine_scale : float
        Multipliers of the liver/spleen/blood, myocardium and urinary tract
        uptake at this visit.

    Returns
    -------
    suv, hu : (N_TISSUES,) float32 arrays
    """
    suv = np.array(phys["suv"], dtype=np.float64)
    for code in (T.LIVER, T.SPLEEN, T.BLOOD, T.AORTA):
        suv[code] *= liver_scale
    suv[T.MYOCARDIUM] = float(np.clip(suv[T.MYOCARDIUM] * heart_scale, 1.0, 15.0))
    for code in (T.COLLECTING, T.URETER, T.BLADDER):
        suv[code] *= urine_scale
    # the bladder stays the hottest structure below the brain (FDG PET/CT practice)
    suv[T.BLADDER] = max(suv[T.BLADDER], 1.3 * max(suv[T.MYOCARDIUM], suv[T.COLLECTING], suv[T.URETER]))
    return suv.astype(np.float32), np.asarray(phys["hu"], dtype=np.float32)
