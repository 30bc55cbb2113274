"""Schedules of the rigid PET-PET registration: pyramid, block averaging, the body the metric samples (no ANTs).

:func:`petcohort.engine.segment.registration.register_rigid` runs ANTs with the
:class:`Schedule` chosen here; docs/methods.md "Registration" gives the figures
behind each choice.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from petcohort.engine.errors import InputError
from petcohort.engine.segment.rigid import Geometry

__all__ = ["BODY_FRACTION_RANGE", "FAST_BLOCK", "FAST_WHOLE_BODY", "SCHEDULES", "Schedule", "block_mean",
           "body_mask", "default_pyramid", "default_schedule", "resolve_schedule"]


@dataclass(frozen=True)
class Schedule:
    """Multi-resolution schedule of :func:`~petcohort.engine.segment.registration.register_rigid`.

    ``block`` : voxels averaged per axis (z, y, x) in numpy before ANTs sees
    the images (1 = none); ``iterations``, ``shrink_factors``,
    ``smoothing_sigmas`` (voxels) : ANTs' pyramid on those block-averaged
    images; ``sampling_rate`` : fraction of voxels the metric samples;
    ``body_level`` : the metric samples only the follow-up's body, see
    :func:`body_mask` (None: every voxel).
    """

    block: int
    iterations: tuple[int, ...]
    shrink_factors: tuple[int, ...]
    smoothing_sigmas: tuple[float, ...]
    sampling_rate: float
    body_level: float | None = None


#: schedule names of :func:`default_schedule`.
SCHEDULES = ("fast", "full")

#: voxels per axis averaged before ANTs in the ``"fast"`` schedule of whole-body PETs.
FAST_BLOCK = 3

#: the ``"fast"`` schedule of whole-body PETs: ANTs' shrink 2, 1 on the 3-voxel block means (about
#: the full schedule's shrink 8 and 4 levels, without its half-resolution level), with a quarter of the
#: body's voxels sampled; chosen on the synthetic cohort's pairs (benchmarks/bench_pipeline.py) and the
#: known-motion pairs of tests/engine/test_registration.py.
FAST_WHOLE_BODY = Schedule(block=FAST_BLOCK, iterations=(100, 50), shrink_factors=(2, 1),
                           smoothing_sigmas=(1.0, 0.5), sampling_rate=0.25, body_level=0.05)

#: :func:`body_mask` is used only when it keeps between these fractions of the grid: above, it saves
#: nothing; below, the image is not a body in air (a truncated field, a cold image) and the metric
#: would see too few voxels for its 32-bin joint histogram.
BODY_FRACTION_RANGE = (0.2, 0.9)


def body_mask(image: np.ndarray, level: float) -> np.ndarray | None:
    """The patient's body on the image the metric sees, or None where masking does not apply.

    Voxels above ``level`` times the image's 99th percentile, grown by one voxel
    (6-connected), so the body's outline stays inside. Air outside the body
    carries no information on the alignment beyond that outline, yet it is half
    of a whole-body field of view: ANTs' metric mask (``-x``) keeps its regular
    samples inside the body only. On the synthetic cohort's 18 follow-up pairs
    and 8 known-motion pairs: 1.16 -> 0.92 CPU s per pair, error against the
    known motion 0.59 mm / 0.90 degree -> 0.22 mm / 0.35 degree (worst case;
    see docs/methods.md "Registration"). Scale-free (SUV or counts). None when
    the mask keeps a fraction of the grid outside :data:`BODY_FRACTION_RANGE`.
    """
    body = ndimage.binary_dilation(image > level * float(np.percentile(image, 99)))
    low, high = BODY_FRACTION_RANGE
    return body if low <= float(body.mean()) <= high else None


def default_schedule(shape: Sequence[int], schedule: str = "fast") -> Schedule:
    """The registration schedule for a follow-up of ``shape``.

    ``"full"``: :func:`default_pyramid` on the full-resolution images (the
    schedule of petcohort <= issue 12). ``"fast"`` (default): whole-body PETs
    (shortest axis >= 64 voxels) are block-averaged by FAST_BLOCK voxels per axis
    first, and ANTs runs the coarse part of the same pyramid on that grid, with
    the smoothing scaled to it. ANTs' own pyramid smooths and shrinks the
    full-resolution images once per level; on a whole-body PET that set-up
    and the finest level cost most of the time (benchmarks/bench_pipeline.py),
    while PET's 4-7 mm FWHM carries little the coarser grid misses. Checked
    against ``"full"`` on synthetic pairs with known motion
    (tests/engine/test_registration.py): within 1 mm / 0.5 degree.
    Smaller images keep the ``"full"`` schedule.
    """
    if schedule not in SCHEDULES:
        raise InputError("BAD_VALUE", f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    iterations, shrinks, sigmas = default_pyramid(shape)
    if schedule == "full" or min(int(n) for n in shape) < 64:
        return Schedule(1, iterations, shrinks, sigmas, 0.1)
    return FAST_WHOLE_BODY


def block_mean(array: np.ndarray, geom: Geometry, block: int) -> tuple[np.ndarray, Geometry]:
    """``block``^3 voxel means (float32; trailing voxels of an axis that do not fill a block are dropped).

    The mean of a block sits at the centre of its voxels: origin moves by
    ``(block - 1) / 2`` voxels, spacing grows ``block`` times.
    """
    if block == 1:
        return np.asarray(array, np.float32), geom
    n = [s // block for s in array.shape]
    cropped = np.asarray(array)[:n[0] * block, :n[1] * block, :n[2] * block]
    out = cropped.reshape(n[0], block, n[1], block, n[2], block).mean(axis=(1, 3, 5), dtype=np.float32)
    return out, Geometry(tuple(s * block for s in geom.spacing),  # type: ignore[arg-type]
                         tuple(o + (block - 1) / 2 * s for o, s in zip(geom.origin, geom.spacing)))


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


def resolve_schedule(shape: Sequence[int], schedule: str, iterations: Sequence[int] | None,
                      shrink_factors: Sequence[int] | None, smoothing_sigmas: Sequence[float] | None,
                      sampling_rate: float | None) -> Schedule:
    """The schedule of :func:`~petcohort.engine.segment.registration.register_rigid`: named, or an explicit full-resolution pyramid."""
    sched = default_schedule(shape, schedule)
    if iterations is not None or shrink_factors is not None or smoothing_sigmas is not None:
        auto = default_pyramid(shape)  # an explicit pyramid runs on the full-resolution images
        sched = Schedule(1, tuple(auto[0] if iterations is None else iterations),
                         tuple(auto[1] if shrink_factors is None else shrink_factors),
                         tuple(auto[2] if smoothing_sigmas is None else smoothing_sigmas), 0.1)
    if len({len(sched.iterations), len(sched.shrink_factors), len(sched.smoothing_sigmas)}) != 1:
        raise InputError("BAD_VALUE", "iterations, shrink_factors and smoothing_sigmas must have one entry "
                                      f"per level, got {list(sched.iterations)}, {list(sched.shrink_factors)}, "
                                      f"{list(sched.smoothing_sigmas)}")
    if sampling_rate is not None:
        sched = dataclasses.replace(sched, sampling_rate=sampling_rate)
    if not 0 < sched.sampling_rate <= 1:
        raise InputError("BAD_VALUE", f"sampling_rate must be in (0, 1], got {sched.sampling_rate!r}")
    return sched
