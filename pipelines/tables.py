"""Cohort outputs: ``results.zarr`` and the cohort tables (paper Tables 1 and 2).

Reads only stage records (``store.stage_records()``: the small summaries of
``quantify``, ``evaluate``, ``percist`` and ``track``) and study attrs; never a
volume. Every table is written, with the rows that can be computed: missing
inputs give empty tables or rows with a ``reason`` column, plus notes (also
written to ``tables/notes.json``), never a crash.

Tables (``tables/<name>.parquet`` + ``.csv``): ``studies``, ``lesions``,
``segmentation``, ``segmentation_paired``, ``agreement``, ``response``,
``delong``, ``deltas``, ``percist``, ``percist_confusion``, ``provenance``. Definitions: docs/methods.md
"Segmentation evaluation" and "Statistics". ``deltas`` holds the per-follow-up delta biomarkers and
responder labels that ``response`` and ``delong`` were computed from (the report draws its ROC curves
and trajectories from it, so a figure never recomputes a number).

Accuracy against the synthetic truth: ``percist_accuracy`` and
``percist_accuracy_confusion`` (automated calls vs each follow-up's designed
response, ``truth.designed_response``; ``percist_confusion`` compares with
``truth.percist``, the same rules on clean images: a consistency check) and
``tracking_accuracy`` (lesion matches vs the phantom's stable lesion ids).
Definitions: docs/methods.md "PERCIST 1.0" and "Lesion tracking accuracy".

Provenance: ``provenance`` has one row per study-stage record (run token,
params, code fingerprint, input hash); the per-study tables ``studies``,
``lesions`` and ``percist`` carry ``record`` (``<stage>@<run token>``, the
record their row comes from) and ``code_hash``; ``results.zarr`` attrs hold
the run configuration (cohort JSON ``run_config``) and each stage's params
and code fingerprints.

Layout: this module assembles and writes the outputs (``results.zarr``,
provenance, :func:`collect`, :func:`build_outputs`); the per-table builders
live in :mod:`petcohort.pipelines.tables_stats` (studies, lesions, Tables 1
and 2, agreement) and :mod:`petcohort.pipelines.tables_accuracy` (PERCIST
calls, accuracy against the synthetic truth), reading the cohort that
:mod:`petcohort.pipelines.tables_gather` gathers.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from petcohort.engine.stats import accessor as _accessor  # noqa: F401 - registers ds.cohort
from petcohort.pipelines.tables_accuracy import (percist_accuracy_frames, percist_frames,
                                                 tracking_accuracy_frame)
from petcohort.pipelines.tables_gather import Cohort, gather
from petcohort.pipelines.tables_stats import (COMPOSITES, META_COLUMNS, REFERENCE, add_note, agreement_frame,
                                              agreement_pairs, biomarker_columns, lesions_frame, response_frames,
                                              segmentation_frames, studies_frame, with_composites)

__all__ = ["TABLES", "REFERENCE", "COMPOSITES", "TRACED", "CohortTables", "collect", "build_outputs", "results_dataset",
           "provenance_frame", "trace_rows", "provenance_attrs", "agreement_pairs", "with_composites"]

log = logging.getLogger(__name__)

TABLES = ("studies", "lesions", "segmentation", "segmentation_paired", "agreement", "response", "delong",
          "deltas", "percist", "percist_confusion", "percist_accuracy",
          "percist_accuracy_confusion", "tracking_accuracy", "provenance")
#: Per-study tables -> the stage whose records their rows come from.
TRACED = {"studies": "quantify", "lesions": "quantify", "percist": "percist"}
PROVENANCE_COLUMNS = ["study", "stage", "status", "reason", "run", "started", "code_hash", "config_hash",
                      "input_hash", "code_version", "params"]


@dataclass
class CohortTables:
    """The cohort tables, the results Dataset and notes (``{table: [text]}``)."""

    frames: dict[str, pd.DataFrame]
    dataset: xr.Dataset
    notes: dict[str, list[str]] = field(default_factory=dict)


# -- results.zarr ------------------------------------------------------------------------------
def results_dataset(c: Cohort, studies: pd.DataFrame) -> xr.Dataset:
    """Dataset with dim ``study`` (coords patient, timepoint, site, scanner, days) and ``source``.

    Variables: every numeric study biomarker (study, source), float64 with NaN
    where missing (the reason is in the ``studies`` table); ``dice``,
    ``recall``, ``precision`` from evaluate; ``percist_category`` (study,
    source; "" = none) and ``truth_percist`` (study; "" = none).
    """
    keys = c.keys
    meta = pd.DataFrame([c.meta(k) for k in keys], columns=META_COLUMNS)
    evals = c.summaries("evaluate")
    calls = c.summaries("percist")
    sources = sorted(set(studies.get("source", pd.Series(dtype=object)))
                     | {s for v in evals.values() for s in (v.get("sources") or {})}
                     | {s for v in calls.values() for s in (v.get("sources") or {})})
    shape = (len(keys), len(sources))
    pos = {k: i for i, k in enumerate(keys)}
    spos = {s: j for j, s in enumerate(sources)}
    data: dict[str, Any] = {}
    for b in biomarker_columns(studies) if not studies.empty else []:
        arr = np.full(shape, np.nan)
        vals = pd.to_numeric(studies[b], errors="coerce").to_numpy()
        for k, s, v in zip(studies["study"], studies["source"], vals):
            arr[pos[k], spos[s]] = v
        data[b] = (("study", "source"), arr)
    for name in ("dice", "recall", "precision"):
        arr = np.full(shape, np.nan)
        for k, summary in evals.items():
            for s, m in (summary.get("sources") or {}).items():
                arr[pos[k], spos[s]] = np.nan if m.get(name) is None else float(m[name])
        data[name] = (("study", "source"), arr)
    cat = np.full(shape, "", dtype=object)
    for k, summary in calls.items():
        for s, call in (summary.get("sources") or {}).items():
            cat[pos[k], spos[s]] = (call or {}).get("category") or ""
    data["percist_category"] = (("study", "source"), cat)
    data["truth_percist"] = ("study", np.array([c.truth_percist(k) or "" for k in keys], dtype=object))
    coords = {"study": np.array(keys, dtype=object), "source": np.array(sources, dtype=object),
              "patient": ("study", meta["patient"].astype(object).to_numpy()),
              "timepoint": ("study", meta["timepoint"].astype(np.int64).to_numpy()),
              "site": ("study", meta["site"].fillna("").astype(object).to_numpy()),
              "scanner": ("study", meta["scanner"].fillna("").astype(object).to_numpy()),
              "days": ("study", pd.to_numeric(meta["days"], errors="coerce").astype(float).to_numpy())}
    return xr.Dataset(data, coords=coords, attrs={"reference_source": REFERENCE,
                                                  "description": "petcohort per-study results"})


# -- provenance --------------------------------------------------------------------------------
def _code_hash(rec: dict) -> str | None:
    code = rec.get("code")
    return code.get("digest") if isinstance(code, dict) else None


def provenance_frame(records: dict[tuple[str, str], dict]) -> pd.DataFrame:
    """One row per study-stage record: status, run token, code/config/input hashes, params (JSON text)."""
    rows = [{"study": key, "stage": stage, "status": rec.get("status"), "reason": rec.get("reason"),
             "run": rec.get("run"), "started": rec.get("started"), "code_hash": _code_hash(rec),
             "config_hash": rec.get("config_hash"), "input_hash": rec.get("input_hash"),
             "code_version": rec.get("code_version"),
             "params": None if rec.get("params") is None else json.dumps(rec["params"], sort_keys=True)}
            for (key, stage), rec in sorted(records.items())]
    return pd.DataFrame(rows, columns=PROVENANCE_COLUMNS)


def trace_rows(frame: pd.DataFrame, stage: str, records: dict[tuple[str, str], dict]) -> pd.DataFrame:
    """Add ``record`` (``<stage>@<run token>``) and ``code_hash`` to a per-study frame (column ``study``)."""
    out = frame.copy()
    if "study" not in out.columns:
        out["record"], out["code_hash"] = pd.Series(dtype=object), pd.Series(dtype=object)
        return out
    recs = [records.get((k, stage)) or {} for k in out["study"]]
    out["record"] = [f"{stage}@{r['run']}" if r.get("run") else None for r in recs]
    out["code_hash"] = [_code_hash(r) for r in recs]
    return out


def provenance_attrs(store, records: dict[tuple[str, str], dict]) -> dict[str, str]:
    """``results.zarr`` attrs: the run configuration and, per stage, the distinct params and code digests (JSON)."""
    params: dict[str, list] = {}
    code: dict[str, list] = {}
    for (_key, stage), rec in sorted(records.items()):
        if rec.get("status") != "committed":
            continue
        p = rec.get("params")
        if p is not None and p not in params.setdefault(stage, []):
            params[stage].append(p)
        c = _code_hash(rec)
        if c is not None and c not in code.setdefault(stage, []):
            code[stage].append(c)
    return {"run_config": json.dumps(store.read_json("run_config"), sort_keys=True),
            "stage_params": json.dumps(params, sort_keys=True), "stage_code": json.dumps(code, sort_keys=True)}


# -- entry points ------------------------------------------------------------------------------
def collect(store) -> CohortTables:
    """Gather every cohort table, the results Dataset and notes from ``store`` (records and attrs only)."""
    records = store.stage_records()   # read once: the cohort's summaries and the provenance use the same records
    c = gather(store, records)
    notes: dict[str, list[str]] = {}
    for stage, n in sorted(c.failed.items()):
        add_note(notes, "stages", f"{n} failed {stage} record(s) left out")
    studies = studies_frame(c)
    if studies.empty:
        add_note(notes, "studies", "no committed quantify records")
    seg, seg_paired = segmentation_frames(c, notes)
    response, delong, deltas = response_frames(c, studies, notes)
    percist, confusion = percist_frames(c, notes)
    frames = {"studies": studies, "lesions": lesions_frame(c), "segmentation": seg,
              "segmentation_paired": seg_paired, "agreement": agreement_frame(studies, notes),
              "response": response, "delong": delong, "deltas": deltas, "percist": percist,
              "percist_confusion": confusion}
    frames["percist_accuracy"], frames["percist_accuracy_confusion"] = percist_accuracy_frames(c, notes)
    frames["tracking_accuracy"] = tracking_accuracy_frame(c, notes)
    for name, stage in TRACED.items():
        frames[name] = trace_rows(frames[name], stage, records)
    frames["provenance"] = provenance_frame(records)
    dataset = results_dataset(c, studies)
    dataset.attrs.update(provenance_attrs(store, records))
    for stage in sorted(set(TRACED.values())):  # each study's values -> the record they come from ("" = none)
        runs = [(records.get((k, stage)) or {}).get("run") for k in dataset["study"].values]
        dataset[f"{stage}_record"] = ("study", np.array([f"{stage}@{r}" if r else "" for r in runs], dtype=object))
    return CohortTables(frames, dataset, notes)


def _arrow_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns holding several Python types (e.g. str and float) become text for Parquet."""
    out = frame.copy()
    for col in out.columns[out.dtypes == object]:
        kinds = {type(v) for v in out[col] if v is not None and not (isinstance(v, float) and np.isnan(v))}
        if len(kinds - {int, float}) and len(kinds) > 1:
            out[col] = [None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in out[col]]
    return out


def build_outputs(store, out_dir: str | Path) -> dict[str, Path]:
    """Write ``results.zarr``, ``tables/<name>.parquet`` + ``.csv`` and ``tables/notes.json`` into ``out_dir``.

    Returns
    -------
    dict
        ``{"results": path, "<table>": parquet path, ..., "notes": path}``.
        The notes (``{table: [text]}``) say what could not be computed and why.
    """
    out = Path(out_dir)
    tdir = out / "tables"
    tdir.mkdir(parents=True, exist_ok=True)
    result = collect(store)
    paths: dict[str, Path] = {"results": out / "results.zarr"}
    result.dataset.to_zarr(paths["results"], mode="w", consolidated=False)
    for name in TABLES:
        frame = _arrow_safe(result.frames[name])
        frame.to_parquet(tdir / f"{name}.parquet", index=False)
        frame.to_csv(tdir / f"{name}.csv", index=False)
        paths[name] = tdir / f"{name}.parquet"
    paths["notes"] = tdir / "notes.json"
    paths["notes"].write_text(json.dumps(result.notes, indent=1, sort_keys=True))
    log.info("wrote results.zarr and %d tables to %s", len(TABLES), out)
    return paths
