"""Input coercion, NaN policy and validation shared by the cohort statistics.

Every public statistic accepts numpy arrays, pandas Series or xarray
DataArrays (anything :func:`numpy.asarray` turns into a 1-D numeric vector)
and validates once, here, at the boundary. Missing values follow an explicit
``nan_policy``:

``"raise"`` (default)
    any NaN (or None) raises ``StatsError`` with reason ``STATS_NAN``.
``"omit"``
    NaNs are dropped; for paired statistics a pair is dropped when either
    member is missing.

Errors carry the reason codes ``BAD_VALUE``, ``BAD_TYPE``, ``STATS_BAD_INPUT``,
``STATS_LENGTH_MISMATCH``, ``STATS_NAN``, ``STATS_ALL_NAN``, ``STATS_TOO_FEW``,
``STATS_SINGLE_CLASS`` and ``STATS_BAD_LABELS``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from petcohort.engine.errors import StatsError

__all__ = ["NAN_POLICIES", "check_policy", "vector", "paired", "single", "binary_labels", "scored"]

NAN_POLICIES = ("raise", "omit")


def check_policy(nan_policy: str) -> str:
    """Return ``nan_policy`` if valid, else raise ``BAD_VALUE``."""
    if nan_policy not in NAN_POLICIES:
        raise StatsError("BAD_VALUE",
                         f"nan_policy={nan_policy!r} is not one of {NAN_POLICIES}")
    return nan_policy


def vector(values: Any, name: str) -> np.ndarray:
    """Coerce ``values`` to a 1-D float64 ndarray (None becomes NaN).

    Parameters
    ----------
    values : array-like, pandas Series or xarray DataArray, shape (n,)
    name : str
        Parameter name used in error messages.
    """
    raw = getattr(values, "values", values)  # Series/DataArray -> array without labels
    probe = np.asarray(raw)
    if probe.dtype.kind in "US" or (probe.dtype.kind == "O" and any(isinstance(v, (str, bytes)) for v in probe.ravel())):
        # numpy would parse "1.5" silently: text is refused, not guessed at
        raise StatsError("BAD_TYPE", f"{name} must be numeric, got text values")
    try:
        try:
            arr = np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError):
            # None / pd.NA (nullable pandas dtypes) mean missing; anything else non-numeric is refused
            obj = np.asarray(raw, dtype=object)
            arr = np.array([np.nan if v is None or v is pd.NA else v for v in obj.ravel()],
                           dtype=np.float64).reshape(obj.shape)
    except (TypeError, ValueError) as exc:
        raise StatsError("BAD_TYPE", f"{name} must be numeric, got {type(values).__name__}: {exc}") from exc
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise StatsError("STATS_BAD_INPUT", f"{name} must be 1-D, got shape {arr.shape}")
    if np.isinf(arr).any():
        raise StatsError("STATS_BAD_INPUT", f"{name} contains infinite values; expected finite numbers")
    return arr


def _apply_policy(mask_nan: np.ndarray, nan_policy: str, names: str) -> np.ndarray:
    """Return the keep-mask for ``mask_nan`` (True where a value is missing)."""
    if mask_nan.size and mask_nan.all():
        raise StatsError("STATS_ALL_NAN", f"{names}: every value is missing (NaN/None)")
    if mask_nan.any() and check_policy(nan_policy) == "raise":
        raise StatsError("STATS_NAN", f"{names}: {int(mask_nan.sum())} missing value(s) with "
                                      "nan_policy='raise'; pass nan_policy='omit' to drop them")
    return ~mask_nan


def _min_n(n: int, min_n: int, names: str) -> None:
    if n < min_n:
        raise StatsError("STATS_TOO_FEW", f"{names}: {n} usable value(s), need at least {min_n}")


def single(x: Any, *, name: str = "x", nan_policy: str = "raise", min_n: int = 3) -> np.ndarray:
    """Validate one sample: 1-D, finite after the NaN policy, at least ``min_n`` values."""
    check_policy(nan_policy)
    arr = vector(x, name)
    arr = arr[_apply_policy(np.isnan(arr), nan_policy, name)]
    _min_n(arr.size, min_n, name)
    return arr


def paired(x: Any, y: Any, *, names: tuple[str, str] = ("x", "y"), nan_policy: str = "raise",
           min_n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Validate two paired samples of equal length; drop incomplete pairs under ``"omit"``."""
    check_policy(nan_policy)
    a, b = vector(x, names[0]), vector(y, names[1])
    if a.size != b.size:
        raise StatsError("STATS_LENGTH_MISMATCH",
                         f"{names[0]} has {a.size} values but {names[1]} has {b.size}; expected equal lengths")
    keep = _apply_policy(np.isnan(a) | np.isnan(b), nan_policy, f"{names[0]}/{names[1]}")
    a, b = a[keep], b[keep]
    _min_n(a.size, min_n, f"{names[0]}/{names[1]} pairs")
    return a, b


def binary_labels(y_true: Any, name: str = "y_true") -> np.ndarray:
    """Coerce class labels to a bool vector (positive class = True / 1).

    Accepts bool, {0, 1} integers or floats; NaN/None are kept as NaN in a
    float array for the caller's NaN policy (see :func:`scored`).
    """
    arr = vector(y_true, name)
    ok = np.isnan(arr) | (arr == 0) | (arr == 1)
    if not ok.all():
        bad = np.unique(arr[~ok])[:5]
        raise StatsError("STATS_BAD_LABELS", f"{name} must hold 0/1 or bool labels, got values {bad.tolist()}")
    return arr


def scored(y_true: Any, *scores: Any, nan_policy: str = "raise",
           score_names: tuple[str, ...] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Validate labels and one or more score vectors for ROC statistics.

    Returns
    -------
    labels : (n,) ndarray of bool
    scores : list of (n,) ndarray of float64
        Rows where the label or any score is missing are dropped under
        ``nan_policy="omit"``. Both classes must remain (``STATS_SINGLE_CLASS``).
    """
    check_policy(nan_policy)
    names = score_names or tuple("score" if len(scores) == 1 else f"score_{i}" for i in range(len(scores)))
    y = binary_labels(y_true)
    s = [vector(v, n) for v, n in zip(scores, names)]
    for arr, n in zip(s, names):
        if arr.size != y.size:
            raise StatsError("STATS_LENGTH_MISMATCH",
                             f"y_true has {y.size} values but {n} has {arr.size}; expected equal lengths")
    missing = np.isnan(y)
    for arr in s:
        missing |= np.isnan(arr)
    keep = _apply_policy(missing, nan_policy, "y_true/" + "/".join(names))
    y = y[keep].astype(bool)
    s = [arr[keep] for arr in s]
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise StatsError("STATS_SINGLE_CLASS",
                         f"y_true holds a single class ({n_pos} positive of {y.size}); "
                         "ROC statistics need both classes")
    return y, s
