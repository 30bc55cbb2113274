"""Rigid registration of the baseline PET onto the follow-up PET (ANTsPy).

The only module of petcohort that imports ``ants``. docs/methods.md "Registration":
the baseline PET is rigidly registered to the follow-up PET; the transform is
applied to the baseline PET (linear) and the baseline lesion mask (label
interpolation, ANTs ``genericLabel``). Deterministic: a fixed random seed for
the metric sampling and one ITK thread.

Geometry: petcohort arrays are ``(Z, Y, X)`` with ``spacing``/``origin`` in
the same array order (docs/contracts.md); ANTs images index ``(x, y, z)``
with spacing/origin in ``(x, y, z)``. Both are LPS physical millimetres, so
the conversion is a transpose of the array and a reversal of the geometry
vectors (ANTsPy ``from_numpy`` docs: "numpy array is indexed [x, y, z]").
The transform itself, its geometry and comparisons are
:mod:`petcohort.engine.segment.rigid`, the schedules (pyramid, block averaging,
the body the metric samples) :mod:`petcohort.engine.segment.reg_schedule`
(neither imports ANTs).

Sources: ANTsPy ``ants.registration`` / ``ants.apply_transforms`` docs
(https://antspy.readthedocs.io), ITK's ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``
(ITK software guide, multithreading).
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from petcohort.engine.errors import InputError, SegmentationError
from petcohort.engine.kernels.label import bounding_box
from petcohort.engine.kernels.resample import resample_affine
from petcohort.engine.segment.reg_schedule import (SCHEDULES, Schedule, block_mean, body_mask, default_pyramid,
                                                   default_schedule, resolve_schedule)
from petcohort.engine.segment.rigid import (MAX_ROTATION_DEG, MAX_TRANSLATION_MM, Geometry, RigidTransform,
                                            index_affine, normalised_correlation)

__all__ = [
    "RegistrationResult",
    "SCHEDULES",
    "Schedule",
    "apply_transform",
    "default_pyramid",
    "default_schedule",
    "register_rigid",
]

log = logging.getLogger(__name__)

@dataclass
class RegistrationResult:
    """Baseline arrays on the follow-up grid, the transform and its QC.

    ``pet`` : (Z, Y, X) float32 SUVbw; ``mask`` : (Z, Y, X) uint8 or None.
    ``flagged`` is True when the registration is implausible (``reason``
    ``REGISTRATION_IMPLAUSIBLE``; ``problems`` says which check failed).
    ``body_fraction``: the fraction of the follow-up grid the metric sampled from
    (:func:`body_mask`; None: every voxel).
    """

    transform: RigidTransform
    pet: np.ndarray
    mask: np.ndarray | None
    corr_before: float
    corr_after: float
    flagged: bool = False
    reason: str | None = None
    problems: list[str] = field(default_factory=list)
    body_fraction: float | None = None

    def summary(self) -> dict[str, Any]:
        return {"transform": self.transform.to_dict(),
                "qc": {"corr_before": self.corr_before, "corr_after": self.corr_after,
                       "body_fraction": self.body_fraction},
                "flagged": self.flagged, "reason": self.reason, "problems": list(self.problems)}


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
    # ants.from_numpy copies ``data.T`` in C order: handing it the transposed view of a (Z, Y, X)
    # array makes that one plain copy of the array (ITK's x-fastest buffer is the same memory
    # order), instead of a strided transposed copy first and a second one inside
    return ants.from_numpy(np.asarray(array, np.float32).T, origin=list(geom.origin[::-1]),
                           spacing=list(geom.spacing[::-1]), direction=np.eye(3))


def _from_ants(image) -> np.ndarray:
    # view() is ITK's buffer seen as (x, y, z); its transpose is the (Z, Y, X) C-order array: one copy
    return np.array(image.view().T, copy=True, order="C")


def _check_image(name: str, array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 3 or min(array.shape) < 4:
        raise InputError("NOT_3D", f"{name} must be a (Z, Y, X) array with >= 4 voxels per axis, "
                                      f"got shape {array.shape}")
    if not np.isfinite(array).all():
        raise InputError("IMAGE_NOT_FINITE", f"{name} contains NaN or infinite values")
    if float(array.max()) == float(array.min()):
        raise SegmentationError("REGISTRATION_FAILED", f"{name} is constant ({float(array.min())}): "
                                                       f"nothing to register")
    return array


def _apply(ants, tx_file: str, moving: np.ndarray, moving_geom: Geometry, fixed_img, interpolator: str):
    """``antsApplyTransforms`` of the ITK transform file ``tx_file``, in single precision.

    ANTs' default double precision converts and copies both images as float64: on a
    demo-size PET (12 MiB float32) 152 MiB of peak memory growth and 0.38 s, against
    59 MiB and 0.26-0.31 s in single precision (same machine, same pair); the
    interpolated values differ in the 7th digit.
    """
    out = ants.apply_transforms(fixed=fixed_img, moving=_to_ants(ants, moving, moving_geom),
                                transformlist=[tx_file], interpolator=interpolator, defaultvalue=0,
                                singleprecision=True)
    return _from_ants(out)


def _fixed_image(ants, shape: Sequence[int], geom: Geometry):
    """An empty float32 ANTs image of the follow-up grid ``shape``/``geom`` (the output grid of a warp)."""
    return ants.from_numpy(np.zeros(tuple(int(s) for s in shape)[::-1], np.float32),
                           origin=list(geom.origin[::-1]), spacing=list(geom.spacing[::-1]), direction=np.eye(3))


def _label_region(transform: RigidTransform, bbox: tuple[slice, ...], moving_geom: Geometry,
                  fixed_shape: Sequence[int], fixed_geom: Geometry) -> tuple[slice, ...] | None:
    """The box of follow-up voxels that can take a label inside ``bbox`` (the labels'
    :func:`~petcohort.engine.kernels.label.bounding_box`) under ``transform``.

    Interpolating at a baseline continuous index ``c`` reads the voxels ``floor(c)`` and
    ``floor(c) + 1`` per axis (nearest neighbour: one of them), so only indices within one
    voxel of the mask's bounding box can take a label. Their follow-up pre-image is a
    parallelepiped (the map is affine); its bounding box, grown one voxel for rounding, holds
    every follow-up voxel that can. None: no voxel can.
    """
    corners = np.array(list(itertools.product(*[(b.start - 1.0, float(b.stop)) for b in bbox])))
    matrix, offset = index_affine(transform, moving_geom, fixed_geom)
    try:
        fixed_idx = (corners - offset) @ np.linalg.inv(matrix).T
    except np.linalg.LinAlgError:   # a degenerate (non-rigid) matrix from a hand-made transform: the whole grid
        return tuple(slice(0, int(n)) for n in fixed_shape)
    start = np.maximum(np.floor(fixed_idx.min(axis=0)).astype(int) - 1, 0)
    stop = np.minimum(np.ceil(fixed_idx.max(axis=0)).astype(int) + 2, np.asarray(fixed_shape, int))
    if (stop <= start).any():
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop))


def _warp_label(ants, tx_file: str, transform: RigidTransform, mask: np.ndarray, moving_geom: Geometry,
                fixed_shape: Sequence[int], fixed_geom: Geometry) -> np.ndarray:
    """``genericLabel`` warp of a binary mask onto the follow-up grid, > 0.5, uint8.

    ANTs resamples only the box of :func:`_label_region` (a lesion mask is a few
    percent of a whole-body grid; the rest of the grid is 0 by construction): on a
    demo pair 0.19 -> 0.01 s, with the same labels as the whole-grid warp (test).
    """
    out = np.zeros(tuple(int(s) for s in fixed_shape), np.uint8)
    bbox = bounding_box(mask)
    box = None if bbox is None else _label_region(transform, bbox, moving_geom, fixed_shape, fixed_geom)
    if box is None:
        return out
    start = np.array([b.start for b in box], float)
    sub_geom = Geometry(fixed_geom.spacing, tuple(np.asarray(fixed_geom.origin, float)  # type: ignore[arg-type]
                                                  + start * np.asarray(fixed_geom.spacing, float)))
    sub = _fixed_image(ants, [b.stop - b.start for b in box], sub_geom)
    out[box] = _apply(ants, tx_file, mask, moving_geom, sub, "genericLabel") > 0.5
    return out


def _resample_labels(transform: RigidTransform, labels: np.ndarray, moving_geom: Geometry,
                     fixed_shape: Sequence[int], fixed_geom: Geometry) -> np.ndarray:
    """Nearest-neighbour label map onto the follow-up grid (int32), computed over the boxes that can hold labels.

    The input is cropped to the labels' bounding box grown one voxel (the crop's
    edge voxels are 0, so a point rounding outside it reads 0, as it would in
    the whole volume), and only the follow-up box of :func:`_label_region` is
    resampled. Lesions fill a small box of a whole-body grid (a fifth to a
    quarter on the demo, all sources together).
    """
    shape = tuple(int(s) for s in fixed_shape)
    out = np.zeros(shape, np.int32)
    bbox = bounding_box(labels)
    box = None if bbox is None else _label_region(transform, bbox, moving_geom, shape, fixed_geom)
    if box is None:
        return out
    crop = tuple(slice(max(b.start - 1, 0), min(b.stop + 1, n)) for b, n in zip(bbox, labels.shape))
    crop_start = np.array([c.start for c in crop], float)
    box_start = np.array([b.start for b in box], float)
    matrix, offset = index_affine(transform, moving_geom, fixed_geom)
    # out index i (in the box) is the follow-up index i + box_start; its baseline index, in the crop
    out[box] = resample_affine(np.asarray(labels[crop], np.int32), matrix, offset + matrix @ box_start - crop_start,
                               [b.stop - b.start for b in box], order=0, dtype=np.int32)
    return out


def _write_transform(ants, transform: RigidTransform | None, path: str) -> str:
    """Write ``transform`` (None: the identity) as an ITK transform file for ``antsApplyTransforms``."""
    kw = {} if transform is None else {"parameters": list(transform.parameters),
                                       "fixed_parameters": list(transform.fixed_parameters)}
    ants.write_transform(ants.create_ants_transform(transform_type="AffineTransform", precision="float",
                                                    dimension=3, **kw), path)
    return path


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
    keep_labels : bool  with ``label``: keep the label values (int32 out, nearest neighbour; lesion ids),
        resampled by :func:`~petcohort.engine.kernels.resample.resample_affine` with ITK's nearest-neighbour
        rule (half up, inside the buffer): same ids as ``antsApplyTransforms``, without its float64 copies.
        Only the labels' bounding box (grown one voxel) is resampled, onto the follow-up box that can
        take a label (:func:`_label_region`); every other voxel is 0 by construction (test: the same ids
        as the whole grid)
    """
    if label and keep_labels:
        return _resample_labels(transform, np.asarray(moving), moving_geom, fixed_shape, fixed_geom)
    ants = _ants()
    tmp = tempfile.mkdtemp(prefix="petcohort-reg-")
    try:
        tx_file = _write_transform(ants, transform, os.path.join(tmp, "rigid.mat"))
        if label:
            return _warp_label(ants, tx_file, transform, np.asarray(moving), moving_geom, fixed_shape, fixed_geom)
        out = _apply(ants, tx_file, moving, moving_geom, _fixed_image(ants, fixed_shape, fixed_geom), "linear")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out.astype(np.float32)


def register_rigid(fixed_pet: np.ndarray, fixed_geom: Geometry, moving_pet: np.ndarray, moving_geom: Geometry,
                   *, moving_mask: np.ndarray | None = None, seed: int = 42,
                   iterations: Sequence[int] | None = None, shrink_factors: Sequence[int] | None = None,
                   smoothing_sigmas: Sequence[float] | None = None, sampling_rate: float | None = None,
                   schedule: str = "fast", max_translation_mm: float = MAX_TRANSLATION_MM,
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
        (sigmas in voxels), run on the full-resolution images; None (all three): the
        ``schedule``'s.
    sampling_rate : float in (0, 1], optional  fraction of voxels sampled by the metric
        (default: the schedule's; 0.1 for an explicit pyramid)
    schedule : {"fast", "full"}  see :func:`default_schedule`; ``"full"`` is the
        full-resolution pyramid of :func:`default_pyramid`
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
        ``NOT_3D``, ``IMAGE_NOT_FINITE``, ``GRID_MISMATCH`` for unusable inputs.
    """
    fixed_pet = _check_image("fixed_pet", fixed_pet)
    moving_pet = _check_image("moving_pet", moving_pet)
    if moving_mask is not None and np.shape(moving_mask) != moving_pet.shape:
        raise InputError("GRID_MISMATCH", f"moving_mask shape {np.shape(moving_mask)} != moving_pet shape "
                                          f"{moving_pet.shape}")
    sched = resolve_schedule(fixed_pet.shape, schedule, iterations, shrink_factors, smoothing_sigmas,
                              sampling_rate)
    ants = _ants()
    fixed_seen, seen_geom = block_mean(fixed_pet, fixed_geom, sched.block)
    fixed_reg = _to_ants(ants, fixed_seen, seen_geom)
    moving_reg = _to_ants(ants, *block_mean(moving_pet, moving_geom, sched.block))
    body = None if sched.body_level is None else body_mask(fixed_seen, sched.body_level)
    metric_mask = {} if body is None else {"mask": _to_ants(ants, body, seen_geom)}
    del fixed_seen
    tmp = tempfile.mkdtemp(prefix="petcohort-reg-")
    try:
        with _seeded(ants, seed):
            try:
                reg = ants.registration(
                    fixed=fixed_reg, moving=moving_reg, type_of_transform="Rigid",
                    outprefix=os.path.join(tmp, "bl2fu_"), aff_metric="mattes", aff_sampling=32,
                    aff_random_sampling_rate=float(sched.sampling_rate), aff_iterations=sched.iterations,
                    aff_shrink_factors=sched.shrink_factors, aff_smoothing_sigmas=sched.smoothing_sigmas,
                    **metric_mask)
            except (RuntimeError, ValueError) as exc:
                raise SegmentationError("REGISTRATION_FAILED", f"ANTs rigid registration failed: {exc}") from None
        tx_files = [f for f in reg["fwdtransforms"] if f.endswith(".mat")]
        if len(tx_files) != 1:
            raise SegmentationError("REGISTRATION_FAILED", f"expected one rigid transform, got {reg['fwdtransforms']}")
        tx = ants.read_transform(tx_files[0])
        transform = RigidTransform(tuple(float(p) for p in tx.parameters),
                                   tuple(float(p) for p in tx.fixed_parameters))  # type: ignore[arg-type]
        fixed_img = fixed_reg if sched.block == 1 else _to_ants(ants, fixed_pet, fixed_geom)  # the output grid
        del reg["warpedfixout"], moving_reg
        if sched.block > 1:  # ANTs warped the block-averaged PET: warp the full-resolution one
            pet = np.asarray(_apply(ants, tx_files[0], moving_pet, moving_geom, fixed_img, "linear"), np.float32)
        else:
            pet = np.asarray(_from_ants(reg["warpedmovout"]), np.float32)
        del reg
        mask = None
        if moving_mask is not None:
            mask = _warp_label(ants, tx_files[0], transform, np.asarray(moving_mask), moving_geom, fixed_pet.shape,
                               fixed_geom)
        if moving_pet.shape == fixed_pet.shape and moving_geom == fixed_geom:
            before = moving_pet   # the identity onto the same grid samples every voxel centre: a copy
        else:
            identity = _write_transform(ants, None, os.path.join(tmp, "identity.mat"))
            before = _apply(ants, identity, moving_pet, moving_geom, fixed_img, "linear")
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
                              reason="REGISTRATION_IMPLAUSIBLE" if flagged else None, problems=problems,
                              body_fraction=None if body is None else float(body.mean()))
