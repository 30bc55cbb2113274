"""3-D connected-component labelling of lesion masks (one whole-volume call).

CPU: ``cc3d.connected_components`` (connected-components-3d, Silversmith,
LGPL-3.0; https://github.com/seung-lab/connected-components-3d), a single
pass over the whole volume: DESIGN.md forbids chunked labelling because
merging labels across chunks costs far more than one call.
GPU: ``cupyx.scipy.ndimage.label`` with the structuring element of the same
connectivity, reached through :func:`petcohort.engine.backend.ndimage`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from petcohort.engine import backend
from petcohort.engine.kernels._validate import check_3d, check_connectivity

__all__ = ["label", "structure"]

# connectivity -> rank of scipy.ndimage.generate_binary_structure(3, rank):
# 1 = faces (6), 2 = faces+edges (18), 3 = faces+edges+corners (26).
_RANK = {6: 1, 18: 2, 26: 3}


def structure(connectivity: int = 26) -> np.ndarray:
    """(3, 3, 3) bool structuring element of 3-D ``connectivity`` (6, 18 or 26)."""
    import scipy.ndimage as ndi  # noqa: PLC0415 - keep import cost off module import

    return ndi.generate_binary_structure(3, _RANK[check_connectivity(connectivity)])


def label(mask: Any, *, connectivity: int = 26) -> tuple[Any, int]:
    """Label the connected components of a 3-D mask.

    Parameters
    ----------
    mask : (Z, Y, X) ndarray (numpy or cupy), any dtype
        Non-zero voxels are foreground.
    connectivity : {6, 18, 26}
        Voxel neighbourhood (faces, +edges, +corners). Use the same value
        everywhere (quantification, detection, tracking).

    Returns
    -------
    labels : (Z, Y, X) ndarray of int32, same namespace as ``mask``
        0 = background, 1..n = components (order of first voxel in C order on
        CPU; cupy's order on GPU).
    n : int
        Number of components.
    """
    check_3d(mask, "mask")
    connectivity = check_connectivity(connectivity)
    xp = backend.get_namespace(mask)
    if xp is np:
        import cc3d  # noqa: PLC0415

        fg = np.ascontiguousarray(mask != 0)
        labels, n = cc3d.connected_components(fg, connectivity=connectivity, return_N=True)
        del fg
        if labels.dtype.itemsize == 4 and n < 2**31:  # cc3d's uint32: the same bits as int32, no copy
            return labels.view(np.int32), int(n)
        return labels.astype(np.int32), int(n)
    ndi = backend.ndimage(xp)
    # cupyx takes the structuring element as a host array_like
    labels, n = ndi.label(mask != 0, structure=structure(connectivity))
    return labels.astype(xp.int32, copy=False), int(n)
