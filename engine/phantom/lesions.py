"""Metastases: irregular ("lumpy") solids, their sites, sizes, uptake and CT look.

A lesion is an ellipsoid whose surface radius is perturbed by a smooth
function of direction (a few low-frequency cosine lobes), so it is lumpy but
star-shaped, and its id, centre and shape stay fixed across visits while a
per-visit state scales its size and uptake. Site frequencies follow the
seed paper's cohort (bone first, then lymph nodes, liver, lung).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .shapes import Superquadric

__all__ = [
    "BONE_SITE_WEIGHTS",
    "ORGAN_WEIGHTS",
    "Lesion",
    "LesionState",
    "LumpySolid",
    "draw_lesion",
    "draw_lesions",
]

ORGAN_WEIGHTS = {"bone": 0.5, "node": 0.25, "liver": 0.15, "lung": 0.10}
BONE_SITE_WEIGHTS = {"vertebra": 0.38, "pelvis": 0.16, "sacrum": 0.08, "rib": 0.14, "femur": 0.08,
                     "sternum": 0.05, "humerus": 0.04, "scapula": 0.04, "skull": 0.03}
# (min, max) diameter in mm per site
_DIAMETER = {"bone": (7.0, 36.0), "rib": (6.0, 14.0), "node": (6.0, 30.0), "liver": (6.0, 40.0),
             "lung": (5.0, 24.0)}


@dataclass(frozen=True)
class Lesion:
    """Fixed geometry and baseline uptake of one metastasis (patient mm).

    Attributes
    ----------
    id : int  stable across visits (>= 1)
    organ : str  ``bone``, ``node``, ``liver`` or ``lung``
    site : str  host name (e.g. ``bone:vertebra``, ``node:axillary``)
    centre : (3,) tuple  (z, y, x) mm
    radii : (3,) tuple  baseline semi-axes (mm) before perturbation
    rot : (3, 3) ndarray
    lobes : (K, 5) ndarray  direction (3), amplitude, phase of each surface lobe
    suv : float  baseline SUVbw at the lesion rim-to-centre maximum
    necrosis : float  relative radius of a cold core (0 = none)
    ct : str  ``lytic``, ``sclerotic``, ``occult`` (bone), ``hypodense`` (liver), ``soft``
    ct_delta : float  HU shift (hypodense liver) or absolute HU (lytic/sclerotic)
    first_visit : int  visit index where it appears (new lesions > 0)
    """

    id: int
    organ: str
    site: str
    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    rot: np.ndarray
    lobes: np.ndarray
    suv: float
    necrosis: float
    ct: str
    ct_delta: float
    first_visit: int = 0

    @property
    def diameter_mm(self) -> float:
        return 2.0 * float(np.cbrt(np.prod(self.radii)))


@dataclass(frozen=True)
class LesionState:
    """A lesion at one visit: linear size factor and peak SUVbw (absent if ``size == 0``)."""

    size: float
    suv: float

    @property
    def present(self) -> bool:
        return self.size > 0.0


@dataclass(frozen=True)
class LumpySolid:
    """The solid of a lesion at one visit, shifted by ``offset`` (mm)."""

    lesion: Lesion
    size: float
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        c = np.add(self.lesion.centre, self.offset)
        r = max(self.lesion.radii) * self.size * (1.0 + np.abs(self.lesion.lobes[:, 3]).sum())
        return c - r, c + r

    def radius(self, z, y, x) -> np.ndarray:
        """Normalised radius: 0 at the centre, 1 on the lumpy surface (> 1 outside)."""
        les = self.lesion
        c = np.add(les.centre, self.offset)
        d = (z - c[0], y - c[1], x - c[2])
        r = les.rot
        u = [(r[0, i] * d[0] + r[1, i] * d[1] + r[2, i] * d[2]) / (les.radii[i] * self.size)
             for i in range(3)]
        rho = np.sqrt(u[0] ** 2 + u[1] ** 2 + u[2] ** 2)
        inv = 1.0 / np.maximum(rho, 1e-9)
        bump = 1.0
        for v0, v1, v2, amp, phase in les.lobes:
            cosang = (u[0] * v0 + u[1] * v1 + u[2] * v2) * inv
            bump = bump + amp * np.cos(2.0 * np.pi * cosang + phase)
        return rho / bump

    def inside(self, z, y, x) -> np.ndarray:
        return self.radius(z, y, x) <= 1.0


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def _sample_in(rng: np.random.Generator, solids: list, *, margin: float = 0.85, site: str = "",
               tries: int = 200) -> tuple[float, float, float] | None:
    for _ in range(tries):
        s = solids[int(rng.integers(len(solids)))]
        lo, hi = s.bbox()
        p = rng.uniform(lo, hi)
        z, y, x = (np.asarray(v) for v in p)
        if isinstance(s, Superquadric):
            lev = float(s.level(z, y, x))
            ok = 0.75 <= lev <= 1.0 if site == "bone:skull" else lev <= margin
        else:
            ok = bool(s.inside(z, y, x))
        if ok:
            return tuple(float(v) for v in p)
    return None


def draw_lesion(rng: np.random.Generator, hosts: dict, lid: int, *, organ: str | None = None,
                exclude_sites: tuple[str, ...] = (), dominant: bool = False, first_visit: int = 0,
                placed: list | None = None, scale: float = 1.0) -> Lesion | None:
    """Draw one lesion in a host of ``hosts`` (see :class:`.anatomy.Anatomy`).

    Parameters
    ----------
    organ : str, optional
        Force the organ; else drawn with :data:`ORGAN_WEIGHTS`.
    exclude_sites : tuple of str
        Hosts not to use (new lesions "in new bones").
    dominant : bool
        A large, hot, measurable lesion (every patient has one at baseline).
    placed : list of Lesion
        Lesions already placed; a new centre keeps clear of them.
    scale : float
        Body rendering scale (``fov_scale``): lesion sizes scale with the body.

    Returns
    -------
    Lesion, or None when no free place was found.
    """
    organs = list(ORGAN_WEIGHTS)
    if organ is None:
        organ = organs[int(rng.choice(len(organs), p=list(ORGAN_WEIGHTS.values())))]
    if organ == "bone":
        names = [n for n in BONE_SITE_WEIGHTS if f"bone:{n}" not in exclude_sites] or list(BONE_SITE_WEIGHTS)
        w = np.array([BONE_SITE_WEIGHTS[n] for n in names])
        site = f"bone:{names[int(rng.choice(len(names), p=w / w.sum()))]}"
    elif organ == "node":
        names = (sorted(k for k in hosts if k.startswith("node:") and k not in exclude_sites)
                 or sorted(k for k in hosts if k.startswith("node:")))
        site = names[int(rng.integers(len(names)))]
    else:
        site = organ
    key = "rib" if site == "bone:rib" else organ
    lo, hi = _DIAMETER[key]
    if dominant:
        lo = max(lo, 0.5 * (lo + hi))
    # log-uniform diameters: many small lesions, a tail of large ones
    diam = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) * scale
    for _ in range(20):
        centre = _sample_in(rng, hosts[site], site=site)
        if centre is None:
            return None
        clear = all(np.linalg.norm(np.subtract(centre, q.centre)) > 0.6 * (diam / 2 + q.diameter_mm / 2)
                    for q in (placed or []))
        if clear:
            break
    else:
        return None
    elong = rng.uniform(0.75, 1.25, size=3)
    radii = tuple(float(v) for v in 0.5 * diam * elong / np.cbrt(np.prod(elong)))
    k = int(rng.integers(2, 5))
    dirs = rng.normal(size=(k, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    lobes = np.column_stack([dirs, rng.uniform(0.04, 0.14, k), rng.uniform(0, 2 * np.pi, k)])
    if dominant:
        suv = float(rng.uniform(6.0, 14.0))
    elif rng.random() < 0.2:  # low-contrast lesions, barely above background
        suv = float(rng.uniform(2.0, 3.2))
    else:
        suv = float(np.clip(np.exp(rng.normal(np.log(5.0), 0.4)), 2.5, 15.0))
    necrosis = float(rng.uniform(0.35, 0.55)) if diam > 20 and rng.random() < 0.35 else 0.0
    if organ == "bone":
        ct = ("lytic", "sclerotic", "occult")[int(rng.choice(3, p=[0.4, 0.35, 0.25]))]
        ct_delta = {"lytic": rng.uniform(20, 90), "sclerotic": rng.uniform(650, 1000), "occult": 0.0}[ct]
    elif organ == "liver":
        ct, ct_delta = "hypodense", float(rng.uniform(10, 30))
    else:
        ct, ct_delta = "soft", float(rng.uniform(30, 50))
    return Lesion(lid, organ, site, centre, radii, _random_rotation(rng), lobes, suv, necrosis, ct,
                  float(ct_delta), first_visit)


def draw_lesions(rng: np.random.Generator, hosts: dict, n: int, *, profile: dict | None = None,
                 scale: float = 1.0) -> list[Lesion]:
    """Baseline lesions of one patient: one dominant lesion, then ``n - 1`` more.

    Parameters
    ----------
    n : int  number of lesions to try to place (>= 1)
    profile : dict, optional  organ weights of this patient's disease (bone-only, mixed, ...)
    scale : float  body rendering scale (lesion sizes follow it)

    Returns
    -------
    list of Lesion, ids 1..len
    """
    weights = profile or ORGAN_WEIGHTS
    organs = list(weights)
    p = np.array(list(weights.values()), float)
    out: list[Lesion] = []
    for i in range(n):
        organ = organs[int(rng.choice(len(organs), p=p / p.sum()))]
        # the dominant lesion sits where a large lesion fits (not in a rib or the skull)
        small = ("bone:rib", "bone:skull", "bone:scapula", "bone:sternum", "bone:humerus") if i == 0 else ()
        les = draw_lesion(rng, hosts, len(out) + 1, organ=organ, dominant=(i == 0), placed=out,
                          exclude_sites=small, scale=scale)
        if les is not None:
            out.append(les)
    return out
