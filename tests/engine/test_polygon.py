"""Scanline polygon fill (engine/kernels/polygon.py) against a per-pixel ray-casting reference."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from petcohort.engine.kernels.polygon import fill_polygons


def brute_force(polygons, shape):
    """Even-odd ray casting per pixel centre, the definition written out (towards +col, half-open rows)."""
    out = np.zeros(shape, dtype=bool)
    edges = []
    for poly in polygons:
        p = [(float(r), float(c)) for r, c in poly]
        if len(p) >= 3:
            edges += [(p[i], p[(i + 1) % len(p)]) for i in range(len(p))]
    for y in range(shape[0]):
        for x in range(shape[1]):
            crossings = 0
            for (r0, c0), (r1, c1) in edges:
                if min(r0, r1) <= y < max(r0, r1):
                    # np.float64 so that the arithmetic is the kernel's, bit for bit
                    col = np.float64(c0) + (np.float64(y) - r0) * (np.float64(c1) - c0) / (np.float64(r1) - r0)
                    crossings += x < col
            out[y, x] = crossings % 2 == 1
    return out


SHAPE = (13, 11)
# vertices inside and a little outside the plane; on a 1/8 lattice (exercises on-edge and on-vertex
# centres and horizontal/vertical edges) or continuous
lattice = st.tuples(st.integers(-16, 8 * 14), st.integers(-16, 8 * 12)).map(lambda t: (t[0] / 8, t[1] / 8))
continuous = st.tuples(st.floats(-2, 14, allow_nan=False), st.floats(-2, 12, allow_nan=False))
polygon = st.lists(st.one_of(lattice, continuous), min_size=3, max_size=9)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.lists(polygon, min_size=1, max_size=3))
def test_random_polygons_match_brute_force(polys):
    """Simple and self-intersecting polygons, one to three per plane (even-odd across polygons)."""
    arrays = [np.array(p) for p in polys]
    np.testing.assert_array_equal(fill_polygons(arrays, SHAPE), brute_force(arrays, SHAPE))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(centre=st.tuples(st.floats(3, 9), st.floats(3, 7)), outer=st.floats(2.2, 4.5), inner=st.floats(0.4, 1.8),
       n=st.integers(3, 12), phase=st.floats(0, 6.3))
def test_nested_pair_is_a_hole(centre, outer, inner, n, phase):
    """A regular polygon with a smaller one inside: the inner one is a hole (XOR)."""
    t = phase + np.arange(n) * 2 * np.pi / n
    ring = [np.stack([centre[0] + r * np.sin(t), centre[1] + r * np.cos(t)], axis=1) for r in (outer, inner)]
    got = fill_polygons(ring, SHAPE)
    np.testing.assert_array_equal(got, brute_force(ring, SHAPE))
    np.testing.assert_array_equal(got, fill_polygons(ring[:1], SHAPE) & ~fill_polygons(ring[1:], SHAPE))


def test_half_open_convention_on_pixel_centres():
    """A square through pixel centres 1..4 covers rows/cols 1..3: top/left edges in, bottom/right out."""
    square = np.array([[1, 1], [1, 4], [4, 4], [4, 1]], float)
    expected = np.zeros((6, 6), bool)
    expected[1:4, 1:4] = True
    np.testing.assert_array_equal(fill_polygons([square], (6, 6)), expected)
    np.testing.assert_array_equal(fill_polygons([square[::-1]], (6, 6)), expected)   # orientation-free
    # two squares sharing an edge tile without overlap or gap
    right = square + [0, 3]
    a, b = fill_polygons([square], (6, 8)), fill_polygons([right], (6, 8))
    assert not np.any(a & b)
    expected = np.zeros((6, 8), bool)
    expected[1:4, 1:7] = True
    np.testing.assert_array_equal(a | b, expected)


def test_half_pixel_outline_and_hole():
    """Outlines on pixel borders select exactly the enclosed pixels; a nested outline is a hole."""
    outer = np.array([[0.5, 0.5], [0.5, 5.5], [5.5, 5.5], [5.5, 0.5]])
    inner = np.array([[1.5, 1.5], [1.5, 3.5], [3.5, 3.5], [3.5, 1.5]])
    expected = np.zeros((7, 7), bool)
    expected[1:6, 1:6] = True
    expected[2:4, 2:4] = False
    np.testing.assert_array_equal(fill_polygons([outer, inner], (7, 7)), expected)


def test_self_intersecting_bow_tie_and_clipping():
    bow = np.array([[0.5, 0.5], [4.5, 4.5], [0.5, 4.5], [4.5, 0.5]])   # crosses itself at (2.5, 2.5)
    np.testing.assert_array_equal(fill_polygons([bow], (5, 5)), brute_force([bow], (5, 5)))
    big = np.array([[-10, -10], [-10, 50], [50, 50], [50, -10]], float)
    assert fill_polygons([big], (4, 3)).all()
    assert not fill_polygons([big + 100], (4, 3)).any()


def test_degenerate_and_bad_input():
    assert not fill_polygons([], (3, 3)).any()
    assert not fill_polygons([np.array([[1.0, 1.0], [2.0, 2.0]])], (3, 3)).any()
    assert fill_polygons([np.zeros((3, 2))], (0, 4)).shape == (0, 4)
    with pytest.raises(ValueError, match=r"polygons\[0\]"):
        fill_polygons([np.zeros((3, 3))], (3, 3))
    with pytest.raises(ValueError, match="non-finite"):
        fill_polygons([np.array([[0, 0], [1, np.nan], [2, 0]])], (3, 3))
