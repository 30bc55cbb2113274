"""The spherical voxel neighbourhood shared by SULpeak and the PERCIST liver reference.

A module of its own so that the code fingerprint of a stage that only needs the
sphere (the liver/blood-pool reference of the threshold stage) does not change
when the SULpeak peak search changes.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from petcohort.engine.kernels._validate import check_positive, check_spacing

__all__ = ["sphere_offsets"]

# relative slack on r^2: voxels exactly on the sphere (r = k * spacing) are inside despite rounding
_R2_SLACK = 1e-9


def sphere_offsets(spacing: Sequence[float], radius_mm: float) -> np.ndarray:
    """Integer offsets of the spherical neighbourhood.

    Parameters
    ----------
    spacing : (sz, sy, sx) mm
    radius_mm : float, mm

    Returns
    -------
    (K, 3) ndarray of int64
        Every ``(dz, dy, dx)`` with ``(dz sz)^2 + (dy sy)^2 + (dx sx)^2 <= r^2``,
        the centre included, in C order.
    """
    s = np.asarray(check_spacing(spacing), dtype=np.float64)
    r = check_positive(radius_mm, "radius_mm")
    reach = np.floor(r / s + 1e-9).astype(np.int64)
    axes = [np.arange(-k, k + 1) for k in reach]
    dz, dy, dx = np.meshgrid(*axes, indexing="ij")
    d2 = (dz * s[0]) ** 2 + (dy * s[1]) ** 2 + (dx * s[2]) ** 2
    keep = d2 <= r * r * (1.0 + _R2_SLACK)
    return np.stack([dz[keep], dy[keep], dx[keep]], axis=1)
