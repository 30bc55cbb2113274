"""The ``ds.cohort`` accessor on the results Dataset (``results.zarr``).

Import this module to register it (``pipelines/tables.py`` does)::

    import xarray as xr
    import petcohort.engine.stats.accessor  # noqa: F401
    ds = xr.open_zarr("out/results.zarr", consolidated=False)
    ds.cohort.deltas("sulpeak", "manual")

Expects the layout written by :func:`petcohort.pipelines.tables.results_dataset`:
dim ``study`` with coords ``patient``, ``timepoint``, ``site``; biomarkers with
dims ``(study, source)``; ``percist_category`` (study, source) and
``truth_percist`` (study), "" meaning none.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from petcohort.engine.errors import StatsError
from petcohort.engine.stats.delta import delta_percent, responder_label

__all__ = ["CohortAccessor"]


@xr.register_dataset_accessor("cohort")
class CohortAccessor:
    """Cohort views of a results Dataset: deltas, responder labels, per-site summaries."""

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds

    def _var(self, biomarker: str, source: str) -> xr.DataArray:
        ds = self._ds
        if biomarker not in ds.data_vars:
            raise StatsError("STATS_UNKNOWN_VARIABLE", f"biomarker={biomarker!r} is not a variable "
                                                       f"(have: {sorted(map(str, ds.data_vars))})")
        if "source" not in ds.dims or source not in ds["source"].values.tolist():
            raise StatsError("STATS_UNKNOWN_SOURCE", f"source={source!r} is not in the dataset's source coordinate")
        return ds[biomarker].sel(source=source)

    def _baseline_index(self) -> dict[str, int]:
        tp = self._ds["timepoint"].values
        patients = self._ds["patient"].values
        return {str(p): i for i, (p, t) in enumerate(zip(patients, tp)) if int(t) == 0}

    def deltas(self, biomarker: str, source: str) -> xr.DataArray:
        """Percent change (FU - BL) / BL * 100 of every follow-up vs its patient's baseline.

        Returns
        -------
        DataArray, dim ``study`` (follow-ups only), percent
            NaN where undefined; the coordinate ``delta_reason`` says why
            (``DELTA_MISSING``, ``DELTA_BASELINE_ZERO``; "" when defined) and
            ``attrs["missing"]`` counts the reasons.
        """
        values = self._var(biomarker, source).values
        base = self._baseline_index()
        fu = np.nonzero(self._ds["timepoint"].values > 0)[0]
        out, reasons = np.full(fu.size, np.nan), []
        for j, i in enumerate(fu):
            b = base.get(str(self._ds["patient"].values[i]))
            d = delta_percent(None if b is None else values[b], values[i])
            out[j] = np.nan if d.value is None else d.value
            reasons.append(d.reason or "")
        counts = pd.Series([r for r in reasons if r], dtype=object).value_counts().to_dict()
        return xr.DataArray(out, dims="study", name=f"delta_{biomarker}",
                            coords={"study": self._ds["study"].values[fu],
                                    "delta_reason": ("study", np.array(reasons, dtype=object))},
                            attrs={"units": "%", "source": source, "missing": {str(k): int(v) for k, v in counts.items()}})

    def responders(self, source: str = "manual") -> xr.DataArray:
        """Responder labels of follow-ups: 1.0 (CMR/PMR), 0.0 (SMD/PMD), NaN unknown.

        From ``percist_category`` of ``source`` when any call is present,
        else from ``truth_percist``; ``attrs["label_source"]`` says which.
        """
        ds = self._ds
        fu = np.nonzero(ds["timepoint"].values > 0)[0]
        calls = None
        if "percist_category" in ds and source in ds["source"].values.tolist():
            calls = ds["percist_category"].sel(source=source).values[fu]
            label_source = f"percist:{source}"
        if calls is None or not any(calls):
            if "truth_percist" not in ds:
                raise StatsError("STATS_NO_LABELS", "the dataset has neither percist_category nor truth_percist")
            calls, label_source = ds["truth_percist"].values[fu], "truth"
        labels = [responder_label(c or None) for c in calls]
        out = np.array([np.nan if v is None else float(v) for v in labels])
        return xr.DataArray(out, dims="study", coords={"study": ds["study"].values[fu]}, name="responder",
                            attrs={"label_source": label_source})

    def per_site(self, biomarker: str, source: str, *, delta: bool = False) -> pd.DataFrame:
        """Per-site summary (n, n_missing, mean, sd, median) of a biomarker or, with ``delta``, of its change."""
        arr = self.deltas(biomarker, source) if delta else self._var(biomarker, source)
        site = self._ds["site"].sel(study=arr["study"]).values
        frame = pd.DataFrame({"site": site, "value": np.asarray(arr.values, dtype=float)})
        g = frame.groupby("site", sort=True)["value"]
        out = pd.DataFrame({"n": g.count(), "n_missing": g.size() - g.count(), "mean": g.mean(),
                            "sd": g.std(ddof=1), "median": g.median()})
        out.attrs.update(biomarker=biomarker, source=source, delta=delta)
        return out
