"""One synthetic study (patient x visit): grid, truth, PET and CT, pure computation.

The output holds the noise-free blurred SUV too, from which the ground-truth
PERCIST call is made (the pipeline does that, with the team's kernels).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .anatomy import build_anatomy
from .design import PatientDesign, stream
from .physics import ct_noise, liver_cov, pet_noise, psf_blur, suv_factors
from .render import organ_masks, paint_classes, render_truth
from .shapes import Grid
from .tissues import T, tables

__all__ = ["SimulatedStudy", "scan_grid", "simulate_study"]

_MARGIN_MM = 12.0


@dataclass
class SimulatedStudy:
    """Arrays and facts of one simulated study.

    Attributes
    ----------
    grid : Grid
    pet : (Z, Y, X) float32  noisy SUVbw (before DICOM quantisation)
    pet_clean : (Z, Y, X) float32  PSF-blurred noise-free SUVbw
    ct : (Z, Y, X) int16  HU
    lesion_ids : (Z, Y, X) uint16
    classes : (Z, Y, X) uint8  tissue codes (:class:`.tissues.T`), for checks
    masks : dict  ``seg/manual`` and ``organs/<name>`` uint8 masks
    lesions : list of dict  painted lesions (id, organ, centre_mm, volume_ml, suv_true, ...)
    factors : dict  :func:`.physics.suv_factors` of the study
    cov_liver : float  target per-voxel liver CoV
    """

    grid: Grid
    pet: np.ndarray
    pet_clean: np.ndarray
    ct: np.ndarray
    lesion_ids: np.ndarray
    classes: np.ndarray
    masks: dict
    lesions: list
    factors: dict
    cov_liver: float


def scan_grid(parts: list, extent_z: tuple[float, float], spacing) -> Grid:
    """A grid fitted to the body: skull vertex to mid-thigh, body outline plus margin in-plane."""
    lo = np.array([np.inf, np.inf])
    hi = -lo
    for code, solid in parts:
        if code in (T.FAT, T.MUSCLE, T.BREAST):
            b0, b1 = solid.bbox()
            lo, hi = np.minimum(lo, b0[1:]), np.maximum(hi, b1[1:])
    z0, z1 = extent_z[0], extent_z[1] + _MARGIN_MM
    shape, origin = [int(np.ceil((z1 - z0) / spacing[0])) + 1], [z0]
    for i in (0, 1):
        n = int(np.ceil((hi[i] - lo[i] + 2 * _MARGIN_MM) / spacing[i + 1])) + 1
        n += n % 2
        centre = 0.5 * (lo[i] + hi[i])
        shape.append(n)
        origin.append(round(centre - 0.5 * (n - 1) * spacing[i + 1], 3))
    return Grid(tuple(shape), tuple(float(s) for s in spacing), tuple(float(o) for o in origin))


def simulate_study(design: PatientDesign, timepoint: int, *, seed: int,
                   voxel_mm: float | None = None) -> SimulatedStudy:
    """Render one visit of a designed patient.

    Parameters
    ----------
    design : PatientDesign
    timepoint : int  visit index (0 = baseline)
    seed : int  cohort seed (the noise stream is ``(patient, 1, timepoint)``)
    voxel_mm : float, optional  isotropic voxel size overriding the scanner's

    Returns
    -------
    SimulatedStudy
    """
    visit = design.visits[timepoint]
    anat = build_anatomy(design.body, bladder_fill=visit.bladder_fill, ureter=visit.ureter)
    spacing = (voxel_mm,) * 3 if voxel_mm else visit.scanner.spacing
    grid = scan_grid(anat.parts, anat.extent_z, spacing)
    boxes: dict = {}
    classes = paint_classes(anat.parts, grid, visit.offset, boxes=boxes)
    suv_t, hu_t = tables(design.phys, liver_scale=visit.liver_scale, heart_scale=visit.heart_scale,
                         urine_scale=visit.urine_scale)
    # FDG keeps accumulating in tumours after 60 min (~0.4 %/min; dual-time-point studies)
    tfac = 1.0 + 0.004 * (visit.uptake_min - 60.0)
    by_id = design.lesion_by_id
    lesions = [(by_id[lid], type(st)(st.size, st.suv * tfac)) for lid, st in sorted(visit.states.items())
               if st.present]
    truth = render_truth(classes, grid, lesions, suv_t, hu_t, offset=visit.offset)
    clean = psf_blur(truth.suv, grid.spacing, visit.scanner.fwhm_mm)
    rng = stream(seed, design.index, 1, timepoint)
    cov = liver_cov(design.body.bmi, visit.scanner.cov)
    pet = pet_noise(clean, rng, cov_liver=cov, liver_suv=float(suv_t[T.LIVER]))
    ct = ct_noise(truth.hu, rng)
    masks = organ_masks(classes, boxes)
    masks["seg/manual"] = (truth.lesion_ids > 0).astype(np.uint8)
    factors = suv_factors(visit.weight_kg, design.body.height_m, design.body.sex, visit.dose_bq,
                          visit.uptake_min * 60.0)
    return SimulatedStudy(grid, pet, clean, ct, truth.lesion_ids, classes, masks, truth.lesion_info, factors, cov)
