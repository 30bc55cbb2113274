"""Rigid registration of the baseline PET onto the follow-up PET (ANTsPy).

The only module of petcohort that imports ``ants``. METHODS.md "Registration":
the baseline PET is rigidly registered to the follow-up PET; the transform is
applied to the baseline PET (linear) and the baseline lesion mask (label
interpolation, ANTs ``genericLabel``). Deterministic: a fixed random seed for
the metric sampling and one ITK thread.

Geometry: petcohort arrays are ``(Z, Y, X)`` with ``spacing``/``origin`` in
the same array order (docs/contracts.md); ANTs images index ``(x, y, z)``
with spacing/origin in ``(x, y, z)``. Both are LPS physical millimetres, so
the conversion is a transpose of the array and a reversal of the geometry
vectors (ANTsPy ``from_numpy`` docs: "numpy array is indexed [x, y, z]").

Sources: ANTsPy ``ants.registration`` / ``ants.apply_transforms`` docs
(https://antspy.readthedocs.io), ITK's ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``
(ITK software guide, multithreading).
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from petcohort.engine.errors import InputError, SegmentationError

__all__ = [
    "MAX_ROTATION_DEG",
    "MAX_TRANSLATION_MM",
    "Geometry",
    "RegistrationResult",
    "RigidTransform",
    "apply_transform",
    "normalised_correlation",
    "register_rigid",
]

log = logging.getLogger(__name__)

#: plausibility limits of a rigid PET-PET registration of one patient (issue 5).
MAX_TRANSLATION_MM = 100.0
MAX_ROTATION_DEG = 20.0


@dataclass(frozen=True)
class Geometry:
    """Voxel grid of a ``(Z, Y, X)`` array: ``spacing`` (mm) and ``origin`` (LPS mm), array order."""

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> Geometry:
        """Read the ``spacing``/``origin`` study attrs (origin defaults to 0)."""
        return cls(_vec3(attrs.get("spacing"), "spacing", positive=True),
                   _vec3(attrs.get("origin", (0.0, 0.0, 0.0)), "origin"))


def _vec3(value: Any, name: str, *, positive: bool = False) -> tuple[float, float, float]:
    try:
        vec = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise InputError("BAD_GEOMETRY", f"{name} must be 3 numbers [z, y, x] mm, got {value!r}") from None
    if len(vec) != 3 or not all(math.isfinite(v) for v in vec) or (positive and min(vec) <= 0):
        raise InputError("BAD_GEOMETRY", f"{name} must be 3 finite{' positive' if positive else ''} "
                                         f"numbers [z, y, x] mm, got {value!r}")
    return vec  # type: ignore[return-value]


@dataclass(frozen=True)
class RigidTransform:
    """A rigid transform mapping follow-up (fixed) points to baseline (moving) points.

    ``parameters`` and ``fixed_parameters`` are ITK ``AffineTransform``
    parameters in ANTs physical ``(x, y, z)`` LPS order: 9 matrix entries
    (row-major) + 3 translations (mm), and the centre of rotation (mm). A point
    ``p`` of the follow-up maps to ``R (p - c) + c + t`` in the baseline.
    """

    parameters: tuple[float, ...]
    fixed_parameters: tuple[float, float, float]

    @property
    def matrix(self) -> np.ndarray:
        return np.asarray(self.parameters[:9], float).reshape(3, 3)

    @property
    def translation_mm(self) -> float:
        """Length (mm) of the translation at the centre of rotation."""
        return float(np.linalg.norm(self.parameters[9:12]))

    @property
    def rotation_deg(self) -> float:
        """Rotation angle (degrees) of the matrix (axis-angle magnitude)."""
        cos = (float(np.trace(self.matrix)) - 1.0) / 2.0
        return math.degrees(math.acos(min(1.0, max(-1.0, cos))))

    def to_dict(self) -> dict[str, Any]:
        return {"type": "AffineTransform", "order": "xyz_lps", "parameters": [float(p) for p in self.parameters],
                "fixed_parameters": [float(p) for p in self.fixed_parameters],
                "translation_mm": self.translation_mm, "rotation_deg": self.rotation_deg}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RigidTransform:
        params, fixed = d.get("parameters"), d.get("fixed_parameters")
        if params is None or fixed is None or len(params) != 12 or len(fixed) != 3:
            raise InputError("BAD_TRANSFORM", f"a rigid transform needs 12 parameters and 3 fixed parameters, "
                                              f"got {d!r}")
        return cls(tuple(float(p) for p in params), tuple(float(p) for p in fixed))  # type: ignore[arg-type]


@dataclass
class RegistrationResult:
    """Baseline arrays on the follow-up grid, the transform and its QC.

    ``pet`` : (Z, Y, X) float32 SUVbw; ``mask`` : (Z, Y, X) uint8 or None.
    ``flagged`` is True when the registration is implausible (``reason``
    ``REGISTRATION_IMPLAUSIBLE``; ``problems`` says which check failed).
    """

    transform: RigidTransform
    pet: np.ndarray
    mask: np.ndarray | None
    corr_before: float
    corr_after: float
    flagged: bool = False
    reason: str | None = None
    problems: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"transform": self.transform.to_dict(),
                "qc": {"corr_before": self.corr_before, "corr_after": self.corr_after},
                "flagged": self.flagged, "reason": self.reason, "problems": list(self.problems)}


def normalised_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two same-shape arrays (all voxels); 0-variance -> SegmentationError."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    if den == 0.0:
        raise SegmentationError("REGISTRATION_FAILED", "normalised correlation is undefined for a constant image")
    return float(a @ b) / den


def _ants():
    # One ITK thread makes the optimiser's reductions run in a fixed order
    # (bitwise reproducible); ITK reads this variable when it first creates
    # its thread pool, so it is set here, before ants is first imported.
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"
    import ants

    return ants


@contextlib.contextmanager
def _seeded(ants, seed: int) -> Iterator[None]:
    # ants.registration passes ``--random-seed`` from ants.config._random_seed;
    # the public set_ants_deterministic() also reseeds numpy's global RNG and
    # forbids plain "Rigid", so the seed is set here and restored after.
    previous = ants.config._random_seed
    ants.config._random_seed = int(seed)
    try:
        yield
    finally:
        ants.config._random_seed = previous


def _to_ants(ants, array: np.ndarray, geom: Geometry):
    img = np.ascontiguousarray(np.asarray(array, np.float32).transpose(2, 1, 0))
    return ants.from_numpy(img, origin=list(geom.origin[::-1]), spacing=list(geom.spacing[::-1]),
                           direction=np.eye(3))


def _from_ants(image) -> np.ndarray:
    return np.ascontiguousarray(image.numpy().transpose(2, 1, 0))


def _check_image(name: str, array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 3 or min(array.shape) < 4:
        raise InputError("BAD_SHAPE", f"{name} must be a (Z, Y, X) array with >= 4 voxels per axis, "
                                      f"got shape {array.shape}")
    if not np.isfinite(array).all():
        raise InputError("NON_FINITE", f"{name} contains NaN or infinite values")
    if float(array.max()) == float(array.min()):
        raise SegmentationError("REGISTRATION_FAILED", f"{name} is constant ({float(array.min())}): "
                                                       f"nothing to register")
    return array


def _apply(ants, tx_file: str, moving: np.ndarray, moving_geom: Geometry, fixed_img, interpolator: str):
    out = ants.apply_transforms(fixed=fixed_img, moving=_to_ants(ants, moving, moving_geom),
                                transformlist=[tx_file], interpolator=interpolator, defaultvalue=0)
    return _from_ants(out)


def apply_transform(transform: RigidTransform, moving: np.ndarray, *, moving_geom: Geometry,
                    fixed_shape: Sequence[int], fixed_geom: Geometry, label: bool = False,
                    keep_labels: bool = False) -> np.ndarray:
    """Resample a baseline array onto the follow-up grid with a saved transform.

    Parameters
    ----------
    transform : RigidTransform  (e.g. ``RigidTransform.from_dict(summary["transform"])``)
    moving : (Z, Y, X) ndarray  baseline PET (SUVbw) or mask
    moving_geom, fixed_geom : Geometry  grids of the baseline and follow-up
    fixed_shape : (3,) ints  follow-up array shape
    label : bool  True: ``genericLabel`` interpolation, uint8 out; else linear, float32 out
    keep_labels : bool  with ``label``: keep the label values (int32 out, nearest neighbour; lesion ids)
    """
    ants = _ants()
    fixed_img = ants.from_numpy(np.zeros(tuple(int(s) for s in fixed_shape)[::-1], np.float32),
                                origin=list(fixed_geom.origin[::-1]), spacing=list(fixed_geom.spacing[::-1]),
                                direction=np.eye(3))
    tx = ants.create_ants_transform(transform_type="AffineTransform", precision="float", dimension=3,
                                    parameters=list(transform.parameters),
                                    fixed_parameters=list(transform.fixed_parameters))
    tmp = tempfile.mkdtemp(prefix="petcohort-reg-")
    try:
        tx_file = os.path.join(tmp, "rigid.mat")
        ants.write_transform(tx, tx_file)
        # Lesion-id maps (keep_labels) hold up to hundreds of labels; genericLabel
        # interpolates each label separately (minutes on a whole body), nearest
        # neighbour keeps the ids exactly at the cost of sub-voxel smoothness.
        interp = ("nearestNeighbor" if keep_labels else "genericLabel") if label else "linear"
        out = _apply(ants, tx_file, moving, moving_geom, fixed_img, interp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if label and keep_labels:
        return np.rint(out).astype(np.int32)
    return (out > 0.5).astype(np.uint8) if label else out.astype(np.float32)


def default_pyramid(shape: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[float, ...]]:
    """(iterations, shrink factors, smoothing sigmas in voxels) of the registration pyramid.

    Whole-body PETs (shortest axis >= 64 voxels): shrink 8, 4, 2, stopping at
    half resolution; measured on a synthetic whole-body PET (336 x 80 x 160)
    on one thread: 15 s, correlation 0.896 -> 0.913, against 110 s and 0.912
    with a full-resolution level (PET's 4-7 mm FWHM is coarser than a voxel).
    Smaller images: shrink 4, 2, 1, so the coarsest level keeps >= 8 voxels
    per axis for images of >= 32 voxels.
    """
    if min(int(n) for n in shape) >= 64:
        return (100, 50, 25), (8, 4, 2), (3.0, 2.0, 1.0)
    return (200, 100, 50), (4, 2, 1), (2.0, 1.0, 0.0)


def register_rigid(fixed_pet: np.ndarray, fixed_geom: Geometry, moving_pet: np.ndarray, moving_geom: Geometry,
                   *, moving_mask: np.ndarray | None = None, seed: int = 42,
                   iterations: Sequence[int] | None = None, shrink_factors: Sequence[int] | None = None,
                   smoothing_sigmas: Sequence[float] | None = None, sampling_rate: float = 0.1,
                   max_translation_mm: float = MAX_TRANSLATION_MM,
                   max_rotation_deg: float = MAX_ROTATION_DEG) -> RegistrationResult:
    """Rigidly register the baseline PET (moving) onto the follow-up PET (fixed).

    Parameters
    ----------
    fixed_pet : (Z, Y, X) ndarray of float, SUVbw  follow-up PET
    fixed_geom : Geometry  its spacing/origin (mm, array order)
    moving_pet : (Z, Y, X) ndarray of float, SUVbw  baseline PET
    moving_geom : Geometry
    moving_mask : (Z, Y, X) ndarray of uint8, optional  baseline lesion mask on the baseline grid
    seed : int  random seed of the metric sampling (Mattes mutual information, regular sampling)
    iterations, shrink_factors, smoothing_sigmas : per level of the multi-resolution pyramid
        (sigmas in voxels); None: :func:`default_pyramid` of the follow-up's shape.
    sampling_rate : float in (0, 1]  fraction of voxels sampled by the metric
    max_translation_mm, max_rotation_deg : float  plausibility limits

    Returns
    -------
    RegistrationResult
        Baseline PET (linear) and mask (genericLabel) on the follow-up grid,
        the transform, and the normalised correlation of the PETs before
        (baseline resampled with the identity) and after registration. It is
        flagged ``REGISTRATION_IMPLAUSIBLE`` when the translation or rotation
        exceeds the limits or the correlation got worse.

    Raises
    ------
    SegmentationError
        ``REGISTRATION_FAILED`` when ANTs fails or an image is constant.
    InputError
        ``BAD_SHAPE``, ``NON_FINITE``, ``GRID_MISMATCH`` for unusable inputs.
    """
    fixed_pet = _check_image("fixed_pet", fixed_pet)
    moving_pet = _check_image("moving_pet", moving_pet)
    if moving_mask is not None and np.shape(moving_mask) != moving_pet.shape:
        raise InputError("GRID_MISMATCH", f"moving_mask shape {np.shape(moving_mask)} != moving_pet shape "
                                          f"{moving_pet.shape}")
    auto = default_pyramid(fixed_pet.shape)
    iterations = auto[0] if iterations is None else iterations
    shrink_factors = auto[1] if shrink_factors is None else shrink_factors
    smoothing_sigmas = auto[2] if smoothing_sigmas is None else smoothing_sigmas
    levels = {len(iterations), len(shrink_factors), len(smoothing_sigmas)}
    if len(levels) != 1:
        raise InputError("BAD_PARAMETER", "iterations, shrink_factors and smoothing_sigmas must have one entry "
                                          f"per level, got {list(iterations)}, {list(shrink_factors)}, "
                                          f"{list(smoothing_sigmas)}")
    if not 0 < sampling_rate <= 1:
        raise InputError("BAD_PARAMETER", f"sampling_rate must be in (0, 1], got {sampling_rate!r}")
    ants = _ants()
    fixed_img = _to_ants(ants, fixed_pet, fixed_geom)
    moving_img = _to_ants(ants, moving_pet, moving_geom)
    tmp = tempfile.mkdtemp(prefix="petcohort-reg-")
    try:
        with _seeded(ants, seed):
            try:
                reg = ants.registration(
                    fixed=fixed_img, moving=moving_img, type_of_transform="Rigid",
                    outprefix=os.path.join(tmp, "bl2fu_"), aff_metric="mattes", aff_sampling=32,
                    aff_random_sampling_rate=float(sampling_rate), aff_iterations=tuple(iterations),
                    aff_shrink_factors=tuple(shrink_factors), aff_smoothing_sigmas=tuple(smoothing_sigmas))
            except (RuntimeError, ValueError) as exc:
                raise SegmentationError("REGISTRATION_FAILED", f"ANTs rigid registration failed: {exc}") from None
        tx_files = [f for f in reg["fwdtransforms"] if f.endswith(".mat")]
        if len(tx_files) != 1:
            raise SegmentationError("REGISTRATION_FAILED", f"expected one rigid transform, got {reg['fwdtransforms']}")
        tx = ants.read_transform(tx_files[0])
        transform = RigidTransform(tuple(float(p) for p in tx.parameters),
                                   tuple(float(p) for p in tx.fixed_parameters))  # type: ignore[arg-type]
        pet = _from_ants(reg["warpedmovout"]).astype(np.float32)
        mask = None
        if moving_mask is not None:
            mask = (_apply(ants, tx_files[0], moving_mask, moving_geom, fixed_img, "genericLabel") > 0.5
                    ).astype(np.uint8)
        before = _from_ants(ants.resample_image_to_target(moving_img, fixed_img, interp_type="linear"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    corr_before = normalised_correlation(fixed_pet, before) if before.max() > before.min() else 0.0
    corr_after = normalised_correlation(fixed_pet, pet) if pet.max() > pet.min() else -1.0
    problems = []
    if transform.translation_mm > max_translation_mm:
        problems.append(f"translation {transform.translation_mm:.1f} mm > {max_translation_mm} mm")
    if transform.rotation_deg > max_rotation_deg:
        problems.append(f"rotation {transform.rotation_deg:.1f} deg > {max_rotation_deg} deg")
    if corr_after < corr_before:
        problems.append(f"correlation after {corr_after:.3f} < before {corr_before:.3f}")
    flagged = bool(problems)
    if flagged:
        log.warning("implausible rigid registration: %s", "; ".join(problems))
    return RegistrationResult(transform=transform, pet=pet, mask=mask, corr_before=corr_before,
                              corr_after=corr_after, flagged=flagged,
                              reason="REGISTRATION_IMPLAUSIBLE" if flagged else None, problems=problems)
