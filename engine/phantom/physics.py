"""Image formation: scanner PSF, PET noise, CT noise, and SUV/SUL factors.

PET: true SUV -> Gaussian PSF of the scanner's FWHM -> noise whose variance
is proportional to the local mean (the Poisson-like behaviour of
reconstructed PET: CoV falls as uptake rises), spatially correlated over
about one voxel as after iterative reconstruction, non-negative. The noise
level is set as the per-voxel coefficient of variation in a homogeneous
liver (realism targets: ~10-15 %, more at higher BMI and on older scanners).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from petcohort.engine.kernels import suv

__all__ = [
    "F18_HALF_LIFE_S",
    "FWHM_TO_SIGMA",
    "ct_noise",
    "liver_cov",
    "pet_noise",
    "psf_blur",
    "suv_factors",
]

F18_HALF_LIFE_S = 6586.2
FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
_CORR_SIGMA_VOX = 0.7  # noise correlation length of OSEM reconstructions (voxels)


def psf_blur(suv: np.ndarray, spacing, fwhm_mm: float) -> np.ndarray:
    """Isotropic Gaussian PSF.

    Parameters
    ----------
    suv : (Z, Y, X) float32  true SUVbw
    spacing : (3,) mm
    fwhm_mm : float  system resolution (full width at half maximum)

    Returns
    -------
    (Z, Y, X) float32
    """
    sigma = [fwhm_mm * FWHM_TO_SIGMA / s for s in spacing]
    return ndi.gaussian_filter(suv.astype(np.float32, copy=False), sigma, mode="nearest", truncate=3.0)


def _unit_field(rng: np.random.Generator, shape) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian field correlated over ~1 voxel (float32)."""
    white = rng.standard_normal(shape, dtype=np.float32)
    # a 3-tap kernel (truncate 2 sigma) is enough for a ~1-voxel correlation
    field = ndi.gaussian_filter(white, _CORR_SIGMA_VOX, output=white, mode="wrap", truncate=2.0)
    # exact variance of filtered unit white noise = product of the 1D kernel energies
    delta = np.zeros(15)
    delta[7] = 1.0
    k = ndi.gaussian_filter1d(delta, _CORR_SIGMA_VOX, truncate=2.0)
    field *= np.float32(1.0 / np.sqrt(float(np.sum(k ** 2)) ** 3))
    return field


def liver_cov(bmi: float, scanner_cov: float) -> float:
    """Per-voxel liver CoV: the scanner's value at BMI 22, growing with sqrt(BMI / 22), at most 20 %."""
    return float(min(scanner_cov * np.sqrt(max(bmi, 15.0) / 22.0), 0.2))


def pet_noise(mean: np.ndarray, rng: np.random.Generator, *, cov_liver: float,
              liver_suv: float) -> np.ndarray:
    """Noisy PET from a blurred noise-free SUV image.

    Variance is ``k * mean`` with ``k = cov_liver**2 * liver_suv``, so the
    CoV is exactly ``cov_liver`` where the mean equals the liver SUV.

    Parameters
    ----------
    mean : (Z, Y, X) float32  blurred SUVbw
    rng : numpy Generator
    cov_liver : float  target per-voxel CoV in the liver (e.g. 0.12)
    liver_suv : float  mean liver SUVbw of the image

    Returns
    -------
    (Z, Y, X) float32, >= 0
    """
    k = np.float32(cov_liver ** 2 * liver_suv)
    out = _unit_field(rng, mean.shape)
    sd = np.maximum(mean, np.float32(0.0))
    sd *= k
    np.sqrt(sd, out=sd)
    out *= sd
    out += mean
    np.maximum(out, np.float32(0.0), out=out)
    return out


def ct_noise(hu: np.ndarray, rng: np.random.Generator, *, sd_hu: float = 10.0) -> np.ndarray:
    """CT on the PET grid: add white noise, clip to [-1024, 3071] and round to int16."""
    noisy = rng.standard_normal(hu.shape, dtype=np.float32)
    noisy *= np.float32(sd_hu)
    noisy += hu
    np.rint(noisy, out=noisy)
    np.clip(noisy, -1024, 3071, out=noisy)
    return noisy.astype(np.int16)


def suv_factors(weight_kg: float, height_m: float, sex: str, dose_bq: float, uptake_s: float) -> dict:
    """SUVbw/SUL factors of a study (docs/methods.md: decay to the scan start).

    Returns
    -------
    dict with ``bw_factor`` (SUVbw per Bq/mL), ``lbm_factor`` (SUL per Bq/mL),
    ``decayed_dose_bq``, ``sul_per_suvbw`` (LBM/W)
    """
    # The same formulas the DICOM path uses (engine/kernels/suv.py), so a
    # synthetic study's factors equal what ingest computes from its headers.
    bw = suv.suvbw_factor_start(weight_kg, dose_bq, F18_HALF_LIFE_S, uptake_s)
    decayed = weight_kg * 1000.0 / bw
    if sex in ("F", "M"):
        ratio, _ = suv.sul_per_suvbw(suv.Body(weight_kg, height_m, sex))
    else:
        ratio = None
    return {"bw_factor": bw, "lbm_factor": None if ratio is None else bw * ratio,
            "decayed_dose_bq": decayed, "sul_per_suvbw": ratio}
