"""Threshold segmentations: the classical baselines the networks are compared with.

* :func:`fixed` - SUV >= a fixed level (2.5 SUVbw by default; the common
  "SUV 2.5" contour, e.g. Im et al., Nucl Med Mol Imaging 2018, review of
  MTV/TLG segmentation methods).
* :func:`relative` - 41% of each hot region's SUVmax (EANM procedure
  guidelines for FDG PET tumour imaging v2.0, Boellaard et al., EJNMMI 2015).
  Hot regions are the connected components of a fixed-threshold seed mask
  (``seed_level``, default 2.5); inside each region only voxels >=
  ``fraction * region SUVmax`` are kept. The relative contour therefore never
  grows beyond its seed region: a region with SUVmax < seed_level / fraction
  (6.1 for 2.5 and 41%) keeps all its seed voxels, and a low-SUVmax region
  cannot leak into the background. Limit: two lesions touching above the seed
  level share one region and one SUVmax.
* :func:`percist_adaptive` - SUL >= the PERCIST 1.0 measurability level of
  the reference actually used (Wahl et al., J Nucl Med 2009): 1.5 x liver
  mean + 2 x liver SD, or 2.0 x blood-pool mean + 2 x blood-pool SD when the
  reference fell back to the descending aorta (docs/methods.md "PERCIST 1.0").

Every function takes ``exclude=``: voxels of physiological-uptake organs
(brain, bladder, kidneys, heart) are removed before thresholding, so they
neither become lesions nor seed a relative region.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from petcohort.engine import backend
from petcohort.engine.errors import InputError
from petcohort.engine.kernels._validate import (check_3d, check_finite, check_fraction, check_positive,
                                                 check_same_grid)
from petcohort.engine.kernels.label import label

__all__ = ["fixed", "relative", "percist_adaptive", "percist_level", "percist_liver_hot", "PERCIST_LEVEL_FACTORS",
           "MAD_TO_SD"]

#: (mean factor, SD factor) of the PERCIST measurability level per reference source (Wahl 2009):
#: ``level = a * mean + b * SD``. The one table both the threshold mask and the PERCIST call use.
PERCIST_LEVEL_FACTORS: dict[str, tuple[float, float]] = {"liver": (1.5, 2.0), "blood_pool": (2.0, 2.0)}


def _prepare(image: Any, exclude: Any, name: str, *, want_keep: bool = True) -> tuple[Any, Any]:
    """Check ``image`` and ``exclude``; (namespace, ``exclude == 0`` or None). ``want_keep=False``: checks only."""
    check_3d(image, name)
    check_finite(image, name)
    xp = backend.get_namespace(image, exclude)
    keep = None
    if exclude is not None:
        check_3d(exclude, "exclude")
        check_same_grid(image, exclude, names=(name, "exclude"))
        keep = (exclude == 0) if want_keep else None
    return xp, keep


def fixed(pet: Any, level: float = 2.5, *, exclude: Any = None) -> Any:
    """Voxels with ``pet >= level`` (outside ``exclude``).

    Parameters
    ----------
    pet : (Z, Y, X) ndarray, float, SUVbw (or SUL)
    level : float, same unit as ``pet``
    exclude : (Z, Y, X) mask or None

    Returns
    -------
    (Z, Y, X) ndarray of uint8 (0/1), same namespace as ``pet``
    """
    xp, keep = _prepare(pet, exclude, "pet")
    level = check_positive(level, "level")
    mask = pet >= level
    if keep is not None:
        mask &= keep
    del keep
    return mask.view(xp.uint8)   # the 0/1 bytes as uint8, without a second whole-volume mask


def relative(pet: Any, fraction: float = 0.41, *, connectivity: int = 26, seed_level: float = 2.5,
             exclude: Any = None, seeds: Any = None) -> Any:
    """Per-region relative threshold (``fraction`` of each region's SUVmax).

    Parameters
    ----------
    pet : (Z, Y, X) ndarray, float, SUVbw
    fraction : float in (0, 1]
        0.41 = the EANM 41% isocontour.
    connectivity : {6, 18, 26}
        Defines the seed regions.
    seed_level : float, SUVbw
        Fixed threshold whose connected components are the hot regions.
    exclude : (Z, Y, X) mask or None
    seeds : (Z, Y, X) mask, optional
        ``fixed(pet, seed_level, exclude=exclude)`` when the caller has it
        already (the threshold stage writes it as its SUV 2.5 mask): it is
        not computed again. Only its non-zero voxels are read; it is not
        modified.

    Returns
    -------
    (Z, Y, X) ndarray of uint8 (0/1), same namespace as ``pet``
    """
    xp, _ = _prepare(pet, exclude, "pet", want_keep=False)   # fixed() applies the exclusion
    fraction = check_fraction(fraction, "fraction")
    if seeds is None:
        seeds = fixed(pet, seed_level, exclude=exclude)
    else:
        check_same_grid(pet, seeds, names=("pet", "seeds"))
    labels, n = label(seeds, connectivity=connectivity)
    if n == 0:
        return xp.zeros(pet.shape, dtype=xp.uint8)
    ndi = backend.ndimage(xp)
    # Work on the seed voxels only (a few % of a whole-body volume): full-volume label lookups
    # and float64 thresholds cost ~6x the PET's bytes of worker memory on a whole-body study.
    where = xp.flatnonzero(labels != 0)   # on a boolean array: 5-8x faster than on int32 (numpy)
    lab = labels.ravel()[where]
    del labels   # the whole-volume labels go before the output is made
    vals = pet.ravel()[where]
    maxima = xp.asarray(ndi.maximum(vals, lab, xp.arange(1, n + 1)), dtype=xp.float64)
    out = xp.zeros(pet.shape, dtype=xp.uint8)
    out.ravel()[where] = vals >= fraction * maxima[lab - 1]
    return out


def percist_level(mean: float, sd: float, *, source: str = "liver") -> float:
    """PERCIST measurability level (SUL) for a reference of ``source``.

    ``1.5 * mean + 2 * SD`` for the liver, ``2.0 * mean + 2 * SD`` for the
    blood pool (:data:`PERCIST_LEVEL_FACTORS`).

    Parameters
    ----------
    mean, sd : float, SUL
        Reference mean (> 0) and SD (>= 0).
    source : {"liver", "blood_pool"}
        The reference actually used (``Reference.source``).

    Raises
    ------
    InputError
        ``BAD_VALUE`` unless mean > 0 and SD >= 0 are finite and ``source``
        is known.
    """
    if source not in PERCIST_LEVEL_FACTORS:
        raise InputError("BAD_VALUE", f"source must be one of {sorted(PERCIST_LEVEL_FACTORS)}, got {source!r}")
    mean = check_positive(mean, "mean")
    try:
        sd = float(sd)
    except (TypeError, ValueError):
        raise InputError("BAD_VALUE", f"sd must be a number >= 0, got {sd!r}") from None
    if not (math.isfinite(sd) and sd >= 0):
        raise InputError("BAD_VALUE", f"sd must be a finite number >= 0, got {sd!r}")
    a, b = PERCIST_LEVEL_FACTORS[source]
    return a * mean + b * sd


#: SD of a normal distribution per median absolute deviation (1 / Phi^-1(3/4)).
MAD_TO_SD = 1.4826


def percist_liver_hot(sul: Any, liver: Any, *, exclude: Any = None) -> tuple[Any, float] | None:
    """What the PERCIST liver sphere of the adaptive mask keeps away from, before that mask exists.

    PERCIST places its 3 cm reference sphere in normal liver, away from lesions;
    the lesions of the PERCIST-adaptive mask are those above the level the
    sphere itself yields. The whole liver's median and MAD-based SD
    (``MAD_TO_SD`` x MAD) are robust to the lesions in it, so the voxels at or
    above the PERCIST liver level of those statistics (``1.5 x median + 2 x
    SD``) mark the liver's lesions without marking normal parenchyma: a fixed
    SUV 2.5 cut marks the noisy upper tail of a normal liver (whose SUVbw is
    often 2-2.5) and leaves no room for the sphere.

    Parameters
    ----------
    sul : (Z, Y, X) ndarray, float, SUL
    liver : (Z, Y, X) mask, same grid
    exclude : (Z, Y, X) mask or None  voxels never marked (physiological uptake)

    Returns
    -------
    (mask, level) : (Z, Y, X) uint8 ndarray and the level (SUL); None when the
    liver mask is empty or its median SUL is not positive.
    """
    host_sul, host_liver = backend.to_numpy(sul), backend.to_numpy(liver)
    check_same_grid(host_sul, host_liver, names=("sul", "liver"))
    values = host_sul[host_liver != 0].astype(np.float64)
    if values.size == 0:
        return None
    median = float(np.median(values))
    if not median > 0:
        return None
    sd = MAD_TO_SD * float(np.median(np.abs(values - median)))
    level = percist_level(median, sd, source="liver")
    return fixed(sul, level, exclude=exclude), level


def percist_adaptive(sul: Any, mean: float, sd: float, *, source: str = "liver", exclude: Any = None) -> Any:
    """Voxels with ``sul >=`` the PERCIST level of the reference (outside ``exclude``).

    Parameters
    ----------
    sul : (Z, Y, X) ndarray, float, SUL
    mean, sd : float, SUL
        Reference statistics (PERCIST 3 cm liver sphere, or the blood pool).
    source : {"liver", "blood_pool"}
        Which reference ``mean``/``sd`` come from; picks the level rule
        (:func:`percist_level`).
    exclude : (Z, Y, X) mask or None

    Returns
    -------
    (Z, Y, X) ndarray of uint8 (0/1)
    """
    return fixed(sul, percist_level(mean, sd, source=source), exclude=exclude)
