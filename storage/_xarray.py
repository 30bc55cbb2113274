"""A study as an xarray Dataset with millimetre coordinates (lazy, dask-backed)."""
from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from petcohort.storage._backends import Backend

__all__ = ["study_dataset"]

_AXES = ("z", "y", "x")


def _axis_coords(shape: tuple[int, ...], attrs: dict[str, Any]) -> dict[str, Any]:
    spacing, origin = attrs.get("spacing"), attrs.get("origin")
    if not (isinstance(spacing, (list, tuple)) and isinstance(origin, (list, tuple))
            and len(spacing) == 3 and len(origin) == 3):
        return {}
    # origin is the centre of voxel [0, 0, 0] (contracts.md), so voxel i sits
    # at origin + i * spacing along each array axis.
    return {ax: (ax, float(o) + float(s) * np.arange(n), {"units": "mm"})
            for ax, n, s, o in zip(_AXES, shape, spacing, origin)}


def study_dataset(backend: Backend, paths: dict[str, str], attrs: dict[str, Any]) -> xr.Dataset:
    """Build the Dataset of one study.

    Parameters
    ----------
    backend : Backend
        Store backend.
    paths : dict of str to str
        Array name -> store path.
    attrs : dict
        Study attrs (copied to ``Dataset.attrs``); ``spacing``/``origin`` (mm,
        z-y-x) give the coordinates.

    Returns
    -------
    xarray.Dataset
        One variable per array, named as in the store (``pet``,
        ``seg/manual``). Arrays on the study grid (the shape of ``pet``, else
        of the first 3-D array) have dims ``(z, y, x)`` with coordinates in mm;
        other arrays get their own dims ``<name>_dim<i>``. Data stay lazy
        (dask, one block per zarr chunk) until computed.
    """
    arrays = {n: zarr.open_array(store=backend.zstore, path=p, mode="r", zarr_format=3)
              for n, p in sorted(paths.items())}
    grid = None
    if "pet" in arrays and arrays["pet"].ndim == 3:
        grid = arrays["pet"].shape
    else:
        grid = next((a.shape for a in arrays.values() if a.ndim == 3), None)
    variables = {}
    for name, arr in arrays.items():
        data = da.from_array(arr, chunks=arr.chunks, name=False) if arr.ndim else np.asarray(arr[...])
        if grid is not None and arr.shape == grid:
            dims = _AXES
        else:
            dims = tuple(f"{name.replace('/', '_')}_dim{i}" for i in range(arr.ndim))
        variables[name] = (dims, data)
    coords = _axis_coords(grid, attrs) if grid is not None else {}
    return xr.Dataset(variables, coords=coords, attrs=dict(attrs))
