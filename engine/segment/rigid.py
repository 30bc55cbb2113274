"""Rigid transforms between a baseline and a follow-up grid: the geometry, no ANTs (pure numpy).

A :class:`RigidTransform` is what :func:`petcohort.engine.segment.registration.register_rigid`
estimates with ANTs and what the ``register`` stage records; this module reads it
back, maps points and voxel indices through it, compares two of them, and holds
the correlation used for the registration's quality check.

Geometry: petcohort arrays are ``(Z, Y, X)`` with ``spacing``/``origin`` in
the same array order (docs/contracts.md); ITK/ANTs transforms act on LPS
physical points in ``(x, y, z)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from petcohort.engine.errors import InputError, SegmentationError

__all__ = ["MAX_ROTATION_DEG", "MAX_TRANSLATION_MM", "Geometry", "RigidTransform", "index_affine",
           "normalised_correlation", "transform_difference"]

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
        raise InputError("BAD_TYPE", f"{name} must be 3 numbers [z, y, x] mm, got {value!r}") from None
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

    def apply(self, points_xyz: np.ndarray) -> np.ndarray:
        """Map follow-up points ``(n, 3)`` (LPS mm, x/y/z) to the baseline: ``R (p - c) + c + t``."""
        c = np.asarray(self.fixed_parameters, float)
        return (np.asarray(points_xyz, float) - c) @ self.matrix.T + c + np.asarray(self.parameters[9:12], float)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RigidTransform:
        params, fixed = d.get("parameters"), d.get("fixed_parameters")
        if params is None or fixed is None or len(params) != 12 or len(fixed) != 3:
            raise InputError("BAD_TRANSFORM", f"a rigid transform needs 12 parameters and 3 fixed parameters, "
                                              f"got {d!r}")
        return cls(tuple(float(p) for p in params), tuple(float(p) for p in fixed))  # type: ignore[arg-type]


#: voxels per chunk of :func:`normalised_correlation` (float64 work arrays of 2 MiB).
_CHUNK = 1 << 18


def normalised_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two same-shape arrays (all voxels); 0-variance -> SegmentationError.

    Centred sums in float64, accumulated over chunks of :data:`_CHUNK` voxels,
    so no full-volume float64 copy is made (a whole-body PET is 3-4 M voxels).
    """
    a = np.asarray(a).reshape(-1)
    b = np.asarray(b).reshape(-1)
    ma = float(np.sum(a, dtype=np.float64)) / a.size
    mb = float(np.sum(b, dtype=np.float64)) / b.size
    saa = sbb = sab = 0.0
    for i in range(0, a.size, _CHUNK):
        da = a[i:i + _CHUNK].astype(np.float64) - ma
        db = b[i:i + _CHUNK].astype(np.float64) - mb
        saa += float(da @ da)
        sbb += float(db @ db)
        sab += float(da @ db)
    den = math.sqrt(saa * sbb)
    if den == 0.0:
        raise SegmentationError("REGISTRATION_FAILED", "normalised correlation is undefined for a constant image")
    return sab / den


def index_affine(transform: RigidTransform, moving_geom: Geometry, fixed_geom: Geometry
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(matrix, offset) mapping a follow-up voxel index (z, y, x) to the baseline's continuous index.

    A follow-up index ``i`` is the LPS point ``origin + spacing * i`` (identity
    directions); the transform maps it to the baseline (``R (p - c) + c + t`` in
    x/y/z), whose continuous index is ``(q - origin) / spacing``.
    """
    rev = slice(None, None, -1)                      # z/y/x <-> x/y/z
    r = transform.matrix[rev, rev]                   # the rotation in z/y/x order
    c = np.asarray(transform.fixed_parameters, float)[rev]
    t = np.asarray(transform.parameters[9:12], float)[rev]
    sf, of = np.asarray(fixed_geom.spacing, float), np.asarray(fixed_geom.origin, float)
    sm, om = np.asarray(moving_geom.spacing, float), np.asarray(moving_geom.origin, float)
    matrix = (r * sf[None, :]) / sm[:, None]
    offset = (r @ (of - c) + c + t - om) / sm
    return matrix, offset


def transform_difference(a: RigidTransform, b: RigidTransform) -> tuple[float, float]:
    """How far two rigid transforms are apart: (translation mm, rotation degrees).

    Translation: distance between the images of ``a``'s centre of rotation
    under ``a`` and ``b`` (the translation at that centre, whatever centre
    ``b`` was parameterised about); rotation: the angle of ``R_a^T R_b``
    (axis-angle magnitude, ``atan2`` form, exact near 0).
    """
    centre = np.asarray([a.fixed_parameters], float)
    mm = float(np.linalg.norm(a.apply(centre) - b.apply(centre)))
    rel = a.matrix.T @ b.matrix
    sin = 0.5 * float(np.linalg.norm([rel[2, 1] - rel[1, 2], rel[0, 2] - rel[2, 0], rel[1, 0] - rel[0, 1]]))
    cos = 0.5 * (float(np.trace(rel)) - 1.0)
    return mm, math.degrees(math.atan2(sin, cos))
