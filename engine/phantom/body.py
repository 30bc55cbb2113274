"""Body build and landmark frame shared by the outline, organs and skeleton.

Landmarks are given for a reference woman of 1.65 m as depth below the vertex
``d`` (mm), lateral ``x`` (patient left +) and ``y`` (posterior +); :class:`Frame`
maps them to patient millimetres for one body.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["REF_HEIGHT_MM", "SCAN_DEPTH_MM", "TORSO", "Body", "Frame", "arm_axis", "fat_profile"]

REF_HEIGHT_MM = 1650.0
SCAN_DEPTH_MM = 1005.0  # mid-thigh of the reference body, below the vertex

# Lean (fat-free) torso outline of the reference woman: depth, half-width x,
# half-depth y, centre y (posterior +).
TORSO = np.array([
    [250, 55, 50, 15], [272, 95, 60, 12], [298, 138, 80, 8], [340, 147, 95, 5],
    [450, 140, 100, 5], [560, 125, 95, 5], [660, 140, 100, 5], [760, 160, 100, 8],
    [860, 155, 90, 10],
])


@dataclass(frozen=True)
class Body:
    """Fixed per-patient body parameters (drawn in :mod:`.design`).

    Attributes
    ----------
    height_m, weight_kg : float
    sex : str ("F" or "M")
    frame : float  lateral build factor (~0.9-1.1)
    scale : float  rendering scale of the whole body (``fov_scale``; 1 = adult size);
        height and weight stay the recorded values
    jitter : (16,) ndarray  uniform(-1, 1) draws that vary organ sizes/positions
    """

    height_m: float
    weight_kg: float
    sex: str
    frame: float = 1.0
    scale: float = 1.0
    jitter: np.ndarray = field(default_factory=lambda: np.zeros(16))

    @property
    def bmi(self) -> float:
        return self.weight_kg / self.height_m ** 2

    @property
    def hs(self) -> float:
        return self.scale * self.height_m * 1000.0 / REF_HEIGHT_MM

    @property
    def fat_mm(self) -> float:
        """Subcutaneous fat thickness (mm), growing with BMI."""
        return self.scale * float(np.clip(5.0 + 2.2 * (self.bmi - 19.0), 4.0, 50.0))


class Frame:
    """Maps reference depth/lateral mm to patient (z, y, x) mm."""

    def __init__(self, body: Body) -> None:
        self.hs = body.hs
        self.ls = body.hs * body.frame

    def p(self, d: float, y: float, x: float) -> tuple[float, float, float]:
        return (-d * self.hs, y * self.ls, x * self.ls)

    def s(self, dz: float, dy: float, dx: float) -> tuple[float, float, float]:
        return (dz * self.hs, dy * self.ls, dx * self.ls)



def fat_profile(d: np.ndarray | float) -> np.ndarray:
    """Relative subcutaneous fat thickness along the body (more over abdomen and hips)."""
    return np.interp(d, [250, 450, 620, 860], [0.6, 0.9, 1.4, 1.2])


def arm_axis(body: Body, f: Frame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centre line and lean radius of an arm hanging at the side.

    Returns
    -------
    d : (K,) reference depths (mm); x : (K,) |x| of the arm axis (patient mm);
    y : (K,) y of the axis (patient mm); r : (K,) lean arm radius (patient mm)
    """
    fat = body.fat_mm
    d = np.array([285.0, 330.0, 450.0, 600.0, 760.0, 880.0, 960.0])
    r = np.array([44.0, 44.0, 40.0, 35.0, 30.0, 27.0, 22.0]) * f.ls
    tor = np.interp(d, TORSO[:, 0], TORSO[:, 1] * f.ls + fat * fat_profile(TORSO[:, 0]))
    x = tor + r + fat * 0.6 + 6.0
    x[0] = tor[0] + r[0] * 0.3
    y = np.interp(d, [275, 600, 960], [10.0, 5.0, -15.0]) * f.ls
    return d, x, y, r
