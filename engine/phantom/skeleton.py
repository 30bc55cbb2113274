"""The skeleton: skull, spine with individual vertebrae and discs, ribs,
sternum, clavicles, scapulae, pelvis, femurs, humeri, forearms and mandible.

Each bone is a cortical solid with a marrow core painted inside it:
trabecular red marrow (vertebrae, pelvis, ribs, sternum, epiphyses; where
bone metastases sit) or fatty yellow marrow (long-bone shafts). Vertebral
levels follow typical adult dimensions (vertebral body widths ~15 mm
cervical to ~50 mm lumbar; e.g. Gray's Anatomy).
"""
from __future__ import annotations

import numpy as np

from .body import TORSO, Body, Frame, arm_axis
from .shapes import ProfiledCylinder, Superquadric, rotation, tube
from .tissues import T

__all__ = ["skeleton", "vertebra_levels"]


def vertebra_levels() -> list[tuple[str, float, float, float, float, float]]:
    """Reference vertebral bodies: (name, depth, y centre, half-height, half-depth y, half-width x)."""
    levels = []
    for k in range(7):
        levels.append((f"C{k + 1}", 172.0 + 15.0 * k, 18.0, 6.0, 10.0, 14.0))
    for k in range(12):
        t = k / 11.0
        y = 55.0 + 10.0 * np.sin(np.pi * t) - 5.0 * t
        levels.append((f"T{k + 1}", 274.0 + 24.0 * k, y, 8.5 + 2.5 * t, 13.0 + 4.0 * t, 16.0 + 6.0 * t))
    for k in range(5):
        levels.append((f"L{k + 1}", 566.0 + 31.0 * k, 42.0 - 4.0 * np.sin(np.pi * k / 4), 12.5, 18.0, 25.0))
    return levels


def _bone(parts: list, outer, inner, marrow: int = T.RED_MARROW) -> None:
    parts.append((T.CORTICAL, outer))
    if inner is not None:
        parts.append((marrow, inner))


def _spine(f: Frame, parts: list, hosts: dict) -> list[tuple[str, float, float, float, float, float]]:
    levels = vertebra_levels()
    d = np.array([lv[1] for lv in levels])
    y = np.array([lv[2] for lv in levels])
    hy = np.array([lv[4] for lv in levels])
    hx = np.array([lv[5] for lv in levels])
    # the disc column first; vertebral bodies are painted over it
    column = ProfiledCylinder(tuple(-d[::-1] * f.hs), tuple(hx[::-1] * 0.95 * f.ls),
                              tuple(hy[::-1] * 0.95 * f.ls), tuple(np.zeros(len(d))),
                              tuple(y[::-1] * f.ls), 2.5)
    parts.append((T.DISC, column))
    bodies = []
    for name, dd, yy, hz, hyy, hxx in levels:
        vb = Superquadric(f.p(dd, yy, 0), f.s(hz, hyy, hxx), 2.6)
        _bone(parts, vb, vb.shrunk(2.0))
        if name not in ("C1", "C2"):
            bodies.append(vb)
        # posterior arch and spinous process (cortical, thin)
        back = yy + hyy
        for c in tube([f.p(dd, back + 4, 0), f.p(dd + hz, back + 24 + 0.6 * hyy, 0)], 5.0 * f.ls):
            parts.append((T.CORTICAL, c))
        for side in (-1, 1):  # pedicles/transverse processes
            for c in tube([f.p(dd, back, side * 10), f.p(dd, back + 10, side * (hxx + 14))], 4.5 * f.ls):
                parts.append((T.CORTICAL, c))
    hosts["bone:vertebra"] = bodies
    sacrum = Superquadric(f.p(765, 70, 0), f.s(55, 18, 46), 2.4, rotation("x", 30.0))
    _bone(parts, sacrum, sacrum.shrunk(3.0))
    hosts["bone:sacrum"] = [sacrum]
    return levels


def _ribs(f: Frame, levels, parts: list, hosts: dict) -> None:
    td = TORSO[:, 0]
    ribs = []
    thoracic = [lv for lv in levels if lv[0].startswith("T")]
    for k, (_, d0, y0, _, hy, hx) in enumerate(thoracic, start=1):
        tmax = 2.75 if k <= 7 else (2.3 if k <= 10 else 1.5)
        drop = 35.0 + 6.0 * k
        pts = []
        for th in np.linspace(0.25, tmax, 8):
            dd = d0 + drop * (th / tmax) ** 1.6 - 8.0 * np.sin(th) * (k > 1)
            a = np.interp(dd, td, TORSO[:, 1]) * 0.86 - 6.0
            b = np.interp(dd, td, TORSO[:, 2]) - 14.0
            cy = np.interp(dd, td, TORSO[:, 3])
            if k <= 2:  # the first ribs are short and tight
                a, b = 0.75 * a, 0.8 * b
            pts.append((dd, cy + b * np.cos(th), a * np.sin(th)))
        for side in (-1, 1):
            path = [f.p(d0, y0 + 4, side * (hx + 4))] + [f.p(p[0], p[1], side * p[2]) for p in pts]
            segs = tube(path, 5.5 * f.ls)
            for c in segs:
                parts.append((T.CORTICAL, c))
            for c in tube(path, 2.8 * f.ls):
                parts.append((T.RED_MARROW, c))
            ribs += segs[1:6]
    hosts["bone:rib"] = ribs


def _girdles(body: Body, f: Frame, parts: list, hosts: dict) -> None:
    sternum = Superquadric(f.p(385, -85, 0), f.s(85, 9, 17), 3.0)
    _bone(parts, sternum, sternum.shrunk(3.0))
    hosts["bone:sternum"] = [sternum]
    scap = []
    for side in (-1, 1):
        for c in tube([f.p(287, -72, side * 18), f.p(280, -55, side * 75), f.p(276, -5, side * 135)],
                      7.0 * f.ls):
            parts.append((T.CORTICAL, c))
        sc = Superquadric(f.p(350, 80, side * 92), f.s(68, 7, 46), 2.5, rotation("z", -side * 28.0))
        _bone(parts, sc, sc.shrunk(2.5))
        scap.append(sc)
    hosts["bone:scapula"] = scap
    # pelvis: iliac wings flaring antero-laterally, acetabular bodies, rami, ischia
    pelvis = []
    for side in (-1, 1):
        wing = Superquadric(f.p(705, 30, side * 100), f.s(58, 52, 10), 2.5, rotation("z", -side * 37.0))
        acet = Superquadric(f.p(790, 8, side * 82), f.s(32, 30, 26), 2.2)
        for s in (wing, acet):
            _bone(parts, s, s.shrunk(3.0))
            pelvis.append(s)
        for path, r in (([f.p(800, -10, side * 78), f.p(828, -58, side * 12)], 9.0),
                        ([f.p(805, 15, side * 82), f.p(855, 25, side * 62)], 11.0)):
            for c in tube(path, r * f.ls):
                parts.append((T.CORTICAL, c))
            for c in tube(path, (r - 4.0) * f.ls):
                parts.append((T.RED_MARROW, c))
    hosts["bone:pelvis"] = pelvis
    femur = []
    for side in (-1, 1):
        head = Superquadric(f.p(800, 5, side * 88), f.s(22, 22, 22))
        troch = Superquadric(f.p(822, 14, side * 130), f.s(22, 18, 16))
        for s in (head, troch):
            _bone(parts, s, s.shrunk(3.5))
        neck = [f.p(800, 5, side * 88), f.p(822, 10, side * 125)]
        shaft = [f.p(822, 8, side * 124), f.p(1250, 0, side * 88)]
        for path, r in ((neck, 15.0), (shaft, 14.0)):
            for c in tube(path, r * f.ls):
                parts.append((T.CORTICAL, c))
        for c in tube(neck, 10.0 * f.ls):
            parts.append((T.RED_MARROW, c))
        for c in tube(shaft, 8.0 * f.ls):
            parts.append((T.YELLOW_MARROW, c))
        femur += [head, troch]
    hosts["bone:femur"] = femur
    # humeri, forearm bones
    dk, ax, ay, _ = arm_axis(body, f)
    hum = []
    for side in (-1, 1):
        def at(dd: float, dy: float = 0.0, dx: float = 0.0, side: int = side) -> tuple[float, float, float]:
            return (-dd * f.hs, float(np.interp(dd, dk, ay)) + dy, side * (float(np.interp(dd, dk, ax)) + dx))
        head = Superquadric(at(300, 0, -18), (22 * f.hs, 22 * f.ls, 22 * f.ls))
        _bone(parts, head, head.shrunk(4.0))
        hum.append(head)
        shaft = [at(310, 0, -14), at(590)]
        for c in tube(shaft, 11.0 * f.ls):
            parts.append((T.CORTICAL, c))
        for c in tube(shaft, 6.0 * f.ls):
            parts.append((T.YELLOW_MARROW, c))
        for dy in (-11.0, 11.0):
            for c in tube([at(600, dy), at(850, dy)], 7.0 * f.ls):
                parts.append((T.CORTICAL, c))
    hosts["bone:humerus"] = hum


def skeleton(body: Body, f: Frame) -> tuple[list, dict, list]:
    """Bone solids.

    Returns
    -------
    before : list of (code, solid)
        Painted before the soft organs (the skull, which the brain fills).
    hosts : dict
        ``bone:<site>`` -> solids that may host a bone metastasis.
    after : list of (code, solid)
        Painted after the organs (bones win over overlapping soft tissue).
    """
    before: list = []
    after: list = []
    hosts: dict = {}
    skull = Superquadric(f.p(80, 2, 0), f.s(73, 91, 75))
    fossa = Superquadric(f.p(132, 44, 0), f.s(36, 40, 60))
    _bone(before, skull, skull.shrunk(3.5 * f.ls))
    _bone(before, fossa, None)
    for c in tube([f.p(150, 5, -56), f.p(196, -38, -44), f.p(206, -76, 0), f.p(196, -38, 44),
                   f.p(150, 5, 56)], 7.0 * f.ls):
        before.append((T.CORTICAL, c))
    hosts["bone:skull"] = [skull]
    levels = _spine(f, after, hosts)
    _ribs(f, levels, after, hosts)
    _girdles(body, f, after, hosts)
    return before, hosts, after
