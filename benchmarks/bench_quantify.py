"""Whole per-study quantification (one core) vs a naive full-volume implementation.

Run: ``python benchmarks/bench_quantify.py`` (about 20-40 s on 2 cores).

Volume 400 x 200 x 200 (Z, Y, X; 16 M voxels), ~30 lesions, bone and liver
masks, SUL factor. Candidate: :func:`petcohort.engine.kernels.lesions.quantify`
(target < 1 s on one core). Baseline: scipy.ndimage.label + full-volume
correlation SULpeak + scipy.ndimage labelled statistics (sum/max/count) over
the whole volume, producing the same per-lesion SUVmax, SUVmean and SULpeak
(checked).
"""
from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi
from _harness import report, timeit
from bench_sulpeak import RADIUS, SPACING, synthetic

from petcohort.engine.kernels.label import structure
from petcohort.engine.kernels.lesions import quantify
from petcohort.engine.kernels.sulpeak import sphere_offsets

SHAPE = (400, 200, 200)


def naive(image, mask, bone, liver):
    labels, n = ndi.label(mask, structure=structure(26))
    idx = np.arange(1, n + 1)
    offsets = sphere_offsets(SPACING, RADIUS)
    reach = np.abs(offsets).max(axis=0)
    fp = np.zeros(tuple(2 * reach + 1))
    fp[tuple((offsets + reach).T)] = 1.0
    means = ndi.correlate(image.astype(np.float64), fp, mode="constant") / \
        ndi.correlate(np.ones(image.shape), fp, mode="constant")
    return {"suvpeak": np.asarray(ndi.maximum(means, labels, idx)),
            "suvmax": np.asarray(ndi.maximum(image, labels, idx)),
            "suvmean": np.asarray(ndi.mean(image, labels, idx)),
            "in_bone": np.asarray(ndi.sum(bone, labels, idx)), "in_liver": np.asarray(ndi.sum(liver, labels, idx))}


def main() -> None:
    image, mask = synthetic(SHAPE, n_lesions=30, seed=3)
    bone = np.zeros(SHAPE, np.uint8)
    bone[:, 90:110, 90:110] = 1
    liver = np.zeros(SHAPE, np.uint8)
    liver[200:260, 40:120, 100:180] = 1

    def candidate():
        return quantify(image, mask, spacing=SPACING, radius_mm=RADIUS, bone=bone, liver=liver, sul_per_suvbw=0.8)

    q = candidate()
    ref = naive(image, mask, bone, liver)
    got = {k: np.array([les[k] for les in q.lesions]) for k in ("suvpeak", "suvmax", "suvmean")}
    for k in got:
        if not np.allclose(np.sort(got[k]), np.sort(ref[k]), rtol=1e-5):
            raise SystemExit(f"{k} differs from the naive implementation")
    t_cand = timeit(candidate, repeat=3)
    t_base = timeit(lambda: naive(image, mask, bone, liver), repeat=1, warmup=0)
    report("quantify_study", "lesions.quantify (cc3d + bbox peaks)", t_cand,
           "scipy label + full correlate + ndimage stats", t_base,
           {"shape": SHAPE, "spacing_mm": SPACING, "lesions": q.study["lesion_count"],
            "lesion_voxels": int(mask.sum()), "target_s": 1.0, "meets_target": t_cand < 1.0})


if __name__ == "__main__":
    main()
