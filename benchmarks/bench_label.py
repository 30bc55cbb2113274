"""Connected components: cc3d (one whole-volume call) vs scipy.ndimage.label.

Run: ``python benchmarks/bench_label.py`` (a few seconds).

Whole-body lesion mask 250 x 144 x 144 with ~30 spherical lesions plus sparse
speckle (a threshold-like mask), 26-connectivity in both. Same component
count checked.
"""
from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi
from _harness import report, timeit
from bench_sulpeak import synthetic

from petcohort.engine.kernels.label import label, structure


def main() -> None:
    _, mask = synthetic(n_lesions=30, seed=1)
    rng = np.random.default_rng(2)
    mask |= (rng.random(mask.shape) < 0.002).astype(np.uint8)
    n = label(mask, connectivity=26)[1]
    nr = ndi.label(mask, structure=structure(26))[1]
    if n != nr:
        raise SystemExit(f"component counts differ: cc3d {n}, scipy {nr}")
    t_cc3d = timeit(lambda: label(mask, connectivity=26), repeat=5)
    t_scipy = timeit(lambda: ndi.label(mask, structure=structure(26)), repeat=5)
    report("label_cc3d_vs_scipy", "cc3d.connected_components", t_cc3d, "scipy.ndimage.label", t_scipy,
           {"shape": mask.shape, "connectivity": 26, "components": n, "foreground_voxels": int(mask.sum())})


if __name__ == "__main__":
    main()
