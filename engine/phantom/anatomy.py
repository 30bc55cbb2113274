"""Whole-body anatomy from analytic solids: outline, fat, muscle, soft organs.

Landmarks are laid out for a reference woman of 1.65 m in "depth below the
vertex" ``d`` (mm), then scaled by height; lateral sizes scale by height and
frame, and subcutaneous fat grows with BMI. Approximate proportions of the
standing body (vertex to chin ~0.13 H, shoulders ~0.17 H, diaphragm ~0.3 H,
hips ~0.48 H, mid-thigh ~0.61 H) follow standard anthropometric tables
(e.g. Drillis & Contini segment lengths, as used in biomechanics texts).

The result is an ordered list of ``(tissue code, solid)``: painting them in
order (later wins) gives the tissue class map; see :mod:`.render`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .body import (
    REF_HEIGHT_MM,
    SCAN_DEPTH_MM,
    TORSO,
    Body,
    Frame,
    arm_axis,
    fat_profile,
)
from .shapes import ProfiledCylinder, Superquadric, rotation, tube
from .skeleton import skeleton
from .tissues import T

__all__ = ["REF_HEIGHT_MM", "SCAN_DEPTH_MM", "Anatomy", "Body", "build_anatomy"]


@dataclass
class Anatomy:
    """Solids of one body, in patient millimetres (z = 0 at the vertex).

    Attributes
    ----------
    parts : list of (int, Shape)  painted in order (tissue code, solid)
    hosts : dict  name -> list of solids where lesions may sit
        (``liver``, ``lung``, ``bone:<name>``, ``node:<station>``)
    extent_z : (float, float)  z range (mm) of the scanned body (mid-thigh, vertex)
    """

    parts: list = field(default_factory=list)
    hosts: dict = field(default_factory=dict)
    extent_z: tuple[float, float] = (0.0, 0.0)


def _outline(body: Body, f: Frame) -> tuple[list, dict]:
    """Skin/fat, muscle and cavity of the torso, head, neck, limbs and breasts."""
    fat = body.fat_mm
    d, ax, ay, cy = (TORSO[:, i] for i in range(4))
    z = -d[::-1] * f.hs
    lax, lay, lcy = ax[::-1] * f.ls, ay[::-1] * f.ls, cy[::-1] * f.ls
    # More fat over the abdomen and hips than over the chest (gynoid/android mix).
    belly = fat_profile(d[::-1])
    zero = tuple(np.zeros_like(z))
    outer = ProfiledCylinder(tuple(z), tuple(lax + fat * belly), tuple(lay + fat * belly), zero,
                             tuple(lcy), 2.3)
    lean = ProfiledCylinder(tuple(z), tuple(lax), tuple(lay), zero, tuple(lcy), 2.3)
    cavity = lean.shrunk(14.0 * f.ls)
    parts: list = [(T.FAT, outer), (T.MUSCLE, lean), (T.VISCERA, cavity)]
    # head and neck (scalp, face) and neck soft tissue
    parts.append((T.MUSCLE, Superquadric(f.p(112, 0, 0), f.s(115, 100, 78))))
    parts.append((T.MUSCLE, Superquadric(f.p(165, -35, 0), f.s(55, 55, 58))))
    neck = ProfiledCylinder((-270 * f.hs, -150 * f.hs), (58 * f.ls + fat * 0.5, 52 * f.ls + fat * 0.5),
                            (52 * f.ls + fat * 0.5, 48 * f.ls + fat * 0.5), (0.0, 0.0),
                            (12 * f.ls, 8 * f.ls))
    parts.append((T.MUSCLE, neck))
    # thighs: fat sleeve then muscle
    for side in (-1, 1):
        zk = (-1080 * f.hs, -800 * f.hs)
        leg_o = ProfiledCylinder(zk, (62 * f.ls + fat * 1.2, 80 * f.ls + fat * 1.3),
                                 (62 * f.ls + fat * 1.2, 78 * f.ls + fat * 1.3),
                                 (side * 82 * f.ls, side * 88 * f.ls), (0.0, 5.0))
        parts += [(T.FAT, leg_o), (T.MUSCLE, leg_o.shrunk(fat * 1.2))]
    # arms hanging at the sides, just off the torso outline
    dk, xs, ys, r = arm_axis(body, f)
    zk = tuple(-dk[::-1] * f.hs)
    for side in (-1, 1):
        arm = ProfiledCylinder(zk, tuple((r + fat * 0.6)[::-1]), tuple((r + fat * 0.6)[::-1]),
                               tuple(side * xs[::-1]), tuple(ys[::-1]))
        parts += [(T.FAT, arm), (T.MUSCLE, arm.shrunk(fat * 0.6))]
    if body.sex == "F":
        size = float(np.clip(32.0 + 1.5 * (body.bmi - 22.0), 22.0, 55.0)) * body.scale
        chest_front = -(100 * f.ls + fat * 0.9)  # anterior skin surface of the chest (y)
        for side in (-1, 1):
            centre = (-440 * f.hs, chest_front + 0.2 * size, side * 80 * f.ls)
            parts.append((T.BREAST, Superquadric(centre, (60 * f.hs, size, 62 * f.ls))))
    return parts, {"torso": outer}


def _organs(body: Body, f: Frame) -> tuple[list, dict]:
    j = body.jitter
    parts: list = []
    hosts: dict = {}
    # brain: grey-matter ellipsoid, white core, deep grey nuclei, cerebellum, brainstem
    brain = Superquadric(f.p(80, 2, 0), f.s(62, 80, 64))
    parts += [(T.CSF, brain.shrunk(-3.0)), (T.GREY, brain), (T.WHITE, brain.shrunk(14.0))]
    for side in (-1, 1):  # basal ganglia and thalami: hot grey nuclei
        parts.append((T.GREY, Superquadric(f.p(88, 5, side * 18), f.s(14, 22, 9))))
    parts.append((T.CEREBELLUM, Superquadric(f.p(138, 48, 0), f.s(24, 30, 52))))
    parts += [(T.BRAINSTEM, c) for c in tube([f.p(112, 18, 0), f.p(165, 30, 0)], 11 * f.ls)]
    for side in (-1, 1):  # palatine tonsils (physiological uptake)
        parts.append((T.TONSIL, Superquadric(f.p(180, -8, side * 14), f.s(10, 8, 7))))
    # lungs; the liver dome and the heart are painted over them
    lungs = []
    for side, w in ((-1, 1.0), (1, 0.92)):
        lung = Superquadric(f.p(420 + 8 * j[0], 15, side * 72), f.s(128, 82, 60 * w), 2.2)
        lungs.append(lung)
        parts.append((T.LUNG, lung))
    hosts["lung"] = lungs
    # heart: blood-filled atria/right ventricle, then the left-ventricle wall and cavity
    hc = (470 + 6 * j[1], -25, 22)
    parts.append((T.BLOOD, Superquadric(f.p(455, -30, -8), f.s(42, 38, 46))))
    rot = rotation("y", -35.0) @ rotation("x", 25.0)
    lv = Superquadric(f.p(*hc), f.s(40, 38, 56), 2.0, rot)
    parts += [(T.MYOCARDIUM, lv), (T.BLOOD, lv.shrunk(11.0))]
    # aorta: root, arch, descending, abdominal, iliac bifurcation
    aorta_pts = [f.p(450, -22, 5), f.p(360, -15, 5), f.p(335, 10, 18), f.p(365, 38, 24),
                 f.p(560, 35, 18), f.p(660, 15, 10), f.p(710, 5, 5)]
    radii = np.array([14, 13, 12, 11, 10, 9, 8.0]) * f.ls
    parts += [(T.AORTA, c) for c in tube(aorta_pts, radii)]
    for side in (-1, 1):
        parts += [(T.AORTA, c) for c in tube([f.p(710, 5, 5), f.p(790, 0, side * 70)], 6 * f.ls)]
    # liver (right lobe larger) and spleen
    liver = [Superquadric(f.p(565 + 6 * j[2], 5, -55), f.s(82, 88, 88 * (1 + 0.08 * j[3])), 2.2),
             Superquadric(f.p(535 + 6 * j[2], -45, 40), f.s(42, 42, 62), 2.2)]
    parts += [(T.LIVER, s) for s in liver]
    hosts["liver"] = liver
    parts.append((T.SPLEEN, Superquadric(f.p(560, 45, 102), f.s(50, 38, 26 * (1 + 0.1 * j[4])), 2.0,
                                         rotation("z", 20.0))))
    # colon frame (variable physiological bowel uptake)
    colon = [f.p(770, -30, -90), f.p(640, -35, -100), f.p(600, -60, -40), f.p(610, -60, 50),
             f.p(620, -20, 100), f.p(760, -25, 95), f.p(790, -30, 40)]
    parts += [(T.BOWEL, c) for c in tube(colon, 14 * f.ls)]
    return parts, hosts


def _urinary(body: Body, f: Frame, *, bladder_fill: float, ureter: tuple[bool, ...]) -> list:
    parts: list = []
    for side, drop in ((-1, 15.0), (1, 0.0)):
        kc = (640 + drop, 42, side * 78)
        rot = rotation("y", side * 15.0)
        parts.append((T.KIDNEY, Superquadric(f.p(*kc), f.s(55, 26, 30), 2.0, rot)))
        parts.append((T.COLLECTING, Superquadric(f.p(kc[0] + 5, 38, side * 62), f.s(20, 11, 11))))
        for dd in (-28.0, 28.0):  # upper and lower calyces
            parts.append((T.COLLECTING, Superquadric(f.p(kc[0] + dd, 40, side * 74), f.s(8, 7, 7))))
        path = [f.p(kc[0] + 15, 38, side * 58), f.p(720, 30, side * 48), f.p(790, 22, side * 58),
                f.p(830, -5, side * 30)]
        # urine runs in boluses (peristalsis): only some ureter segments are visible
        for k, seg in enumerate(tube(path, 3.5 * f.ls)):
            if ureter[(k + (side > 0) * 3) % len(ureter)]:
                parts.append((T.URETER, seg))
    scale = bladder_fill ** (1.0 / 3.0)
    parts.append((T.BLADDER, Superquadric(f.p(828, -28, 0), f.s(34 * scale, 34 * scale, 44 * scale),
                                          2.3)))
    return parts


def build_anatomy(body: Body, *, bladder_fill: float = 1.0,
                  ureter: tuple[bool, ...] = (True, False, True, False, False, True)) -> Anatomy:
    """All solids of one body at one visit.

    Parameters
    ----------
    body : Body
        Fixed per-patient parameters.
    bladder_fill : float
        Bladder volume relative to the reference (~0.4-1.6), varies per visit.
    ureter : tuple of bool
        Which ureter segments hold urine activity at this visit.

    Returns
    -------
    Anatomy
    """
    f = Frame(body)
    out_parts, _ = _outline(body, f)
    org_parts, hosts = _organs(body, f)
    bone_parts, bone_hosts, bone_after = skeleton(body, f)
    hosts.update(bone_hosts)
    hosts.update(_node_stations(f))
    parts = out_parts + bone_parts + org_parts + _urinary(body, f, bladder_fill=bladder_fill,
                                                           ureter=ureter) + bone_after
    return Anatomy(parts=parts, hosts=hosts, extent_z=(-SCAN_DEPTH_MM * f.hs, 0.0))


def _node_stations(f: Frame) -> dict:
    """Lymph-node stations (centre solids) where nodal metastases of breast cancer sit."""
    st = {
        "axillary": [(350, 10, s * 118) for s in (-1, 1)],
        "supraclavicular": [(272, -5, s * 48) for s in (-1, 1)],
        "cervical": [(215, -5, s * 38) for s in (-1, 1)],
        "mediastinal": [(380, -10, 5), (410, 5, -12), (350, -5, 12)],
        "hilar": [(425, 18, s * 38) for s in (-1, 1)],
        "internal_mammary": [(390, -85, s * 28) for s in (-1, 1)],
        "retroperitoneal": [(640, 28, s * 28) for s in (-1, 1)],
        "iliac": [(770, 15, s * 62) for s in (-1, 1)],
    }
    return {f"node:{k}": [Superquadric(f.p(*c), f.s(14, 10, 10)) for c in v] for k, v in st.items()}
