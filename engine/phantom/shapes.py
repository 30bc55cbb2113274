"""Analytic solids evaluated on a voxel grid, each only inside its bounding box.

All coordinates are millimetres in array-axis order ``(z, y, x)`` (contracts:
``z`` towards the head, ``y`` posterior, ``x`` to the patient's left). A shape
answers two questions: its axis-aligned bounding box, and which points of a
broadcastable ``(z, y, x)`` coordinate triple lie inside it. Rasterising a
shape touches only the voxels of its box, so a whole-body phantom of a few
hundred solids costs about as much as a few full-volume passes.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = [
    "Capsule",
    "Grid",
    "ProfiledCylinder",
    "Shape",
    "Superquadric",
    "box_slices",
    "coords",
    "rotation",
    "tube",
]


@dataclass(frozen=True)
class Grid:
    """A regular axis-aligned voxel grid.

    Attributes
    ----------
    shape : (3,) tuple of int
        ``(Z, Y, X)`` voxel counts.
    spacing : (3,) tuple of float
        ``(sz, sy, sx)`` in mm.
    origin : (3,) tuple of float
        Position (mm) of the centre of voxel ``[0, 0, 0]`` in ``(z, y, x)``.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    def axis(self, i: int) -> np.ndarray:
        """Voxel-centre coordinates (mm) along axis ``i``, float64."""
        return self.origin[i] + self.spacing[i] * np.arange(self.shape[i], dtype=np.float64)

    @property
    def voxel_ml(self) -> float:
        """Voxel volume in mL."""
        return float(np.prod(self.spacing)) / 1000.0


class Shape(Protocol):
    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper corner (mm, ``(z, y, x)``) enclosing the solid."""

    def inside(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Boolean membership of broadcastable coordinate arrays (mm)."""


def rotation(axis: str, degrees: float) -> np.ndarray:
    """(3, 3) rotation matrix acting on ``(z, y, x)`` vectors about one axis."""
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    # index of the axis in (z, y, x); the other two rotate in their plane
    i = "zyx".index(axis)
    j, k = [n for n in range(3) if n != i]
    r = np.eye(3)
    r[j, j], r[j, k], r[k, j], r[k, k] = c, -s, s, c
    return r


@dataclass(frozen=True)
class Superquadric:
    """Solid ``sum_i |u_i / a_i| ** p <= 1`` with ``u = R.T (point - centre)``.

    ``p = 2`` is an ellipsoid; larger ``p`` gives box-like solids (vertebral
    bodies, iliac plates). ``rot`` maps body axes to world axes.
    """

    centre: tuple[float, float, float]
    semi: tuple[float, float, float]
    p: float = 2.0
    rot: np.ndarray | None = None

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        c = np.asarray(self.centre, float)
        a = np.asarray(self.semi, float)
        if self.rot is None:
            ext = a
        else:
            # the superquadric lies inside its box of half-sizes a; rotate the box
            ext = np.abs(np.asarray(self.rot)) @ a
        return c - ext, c + ext

    def level(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """The superquadric function (``<= 1`` inside), broadcast over the inputs."""
        d = (z - self.centre[0], y - self.centre[1], x - self.centre[2])
        if self.rot is not None:
            r = np.asarray(self.rot)
            d = tuple(r[0, i] * d[0] + r[1, i] * d[1] + r[2, i] * d[2] for i in range(3))
        if self.p == 2.0:
            return sum((d[i] / self.semi[i]) ** 2 for i in range(3))
        return sum(np.abs(d[i] / self.semi[i]) ** self.p for i in range(3))

    def inside(self, z, y, x):
        return self.level(z, y, x) <= 1.0

    def shrunk(self, mm: float) -> Superquadric:
        """The same solid with every semi-axis reduced by ``mm`` (a shell's inside)."""
        return Superquadric(self.centre, tuple(max(s - mm, 0.5) for s in self.semi), self.p, self.rot)


@dataclass(frozen=True)
class Capsule:
    """Points within ``radius`` (mm) of the segment ``a``-``b``; radius tapers linearly."""

    a: tuple[float, float, float]
    b: tuple[float, float, float]
    radius: float
    radius_b: float | None = None

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        a, b = np.asarray(self.a, float), np.asarray(self.b, float)
        r = max(self.radius, self.radius_b or 0.0)
        return np.minimum(a, b) - r, np.maximum(a, b) + r

    def inside(self, z, y, x):
        a = self.a
        v = np.subtract(self.b, self.a)
        vv = float(v @ v) or 1e-12
        dz, dy, dx = z - a[0], y - a[1], x - a[2]
        t = np.clip((dz * v[0] + dy * v[1] + dx * v[2]) / vv, 0.0, 1.0)
        d2 = (dz - t * v[0]) ** 2 + (dy - t * v[1]) ** 2 + (dx - t * v[2]) ** 2
        rb = self.radius if self.radius_b is None else self.radius_b
        r = self.radius + (rb - self.radius) * t
        return d2 <= r * r


def tube(points: Sequence[Sequence[float]], radii: float | Sequence[float]) -> list[Capsule]:
    """A polyline tube (aorta, ureter, rib) as a chain of tapered capsules."""
    pts = [tuple(float(c) for c in p) for p in points]
    rs = [float(radii)] * len(pts) if np.isscalar(radii) else [float(r) for r in radii]
    return [Capsule(pts[i], pts[i + 1], rs[i], rs[i + 1]) for i in range(len(pts) - 1)]


@dataclass(frozen=True)
class ProfiledCylinder:
    """A z-extruded superellipse whose half-widths and centre vary with z.

    Cross-section at height z: ``|(x - cx(z)) / ax(z)| ** p + |(y - cy(z)) / ay(z)| ** p <= 1``,
    the knots linearly interpolated (the torso, neck, limbs). Outside
    ``[z_knots[0], z_knots[-1]]`` the solid is empty.
    """

    z_knots: tuple[float, ...]  # increasing
    ax: tuple[float, ...]
    ay: tuple[float, ...]
    cx: tuple[float, ...]
    cy: tuple[float, ...]
    p: float = 2.0

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        cx, cy = np.asarray(self.cx), np.asarray(self.cy)
        ax, ay = np.asarray(self.ax), np.asarray(self.ay)
        lo = np.array([self.z_knots[0], (cy - ay).min(), (cx - ax).min()])
        hi = np.array([self.z_knots[-1], (cy + ay).max(), (cx + ax).max()])
        return lo, hi

    def inside(self, z, y, x):
        zk = self.z_knots
        ax = np.interp(z, zk, self.ax)
        ay = np.interp(z, zk, self.ay)
        cx = np.interp(z, zk, self.cx)
        cy = np.interp(z, zk, self.cy)
        f = np.abs((x - cx) / ax) ** self.p + np.abs((y - cy) / ay) ** self.p
        return (f <= 1.0) & (z >= zk[0]) & (z <= zk[-1])

    def shrunk(self, mm: float) -> ProfiledCylinder:
        return ProfiledCylinder(self.z_knots, tuple(max(a - mm, 1.0) for a in self.ax),
                                tuple(max(a - mm, 1.0) for a in self.ay), self.cx, self.cy, self.p)


def box_slices(grid: Grid, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Index slices of the voxels whose centres may lie in ``[lo, hi]``; None if outside."""
    out = []
    for i in range(3):
        k0 = int(np.floor((lo[i] - grid.origin[i]) / grid.spacing[i]))
        k1 = int(np.ceil((hi[i] - grid.origin[i]) / grid.spacing[i])) + 1
        k0, k1 = max(k0, 0), min(k1, grid.shape[i])
        if k1 <= k0:
            return None
        out.append(slice(k0, k1))
    return tuple(out)


def coords(grid: Grid, sl: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcastable ``(nz,1,1)``, ``(1,ny,1)``, ``(1,1,nx)`` voxel-centre coordinates (mm)."""
    z = grid.axis(0)[sl[0]][:, None, None]
    y = grid.axis(1)[sl[1]][None, :, None]
    x = grid.axis(2)[sl[2]][None, None, :]
    return z, y, x
