"""Data gathering for the cohort report: tables, study attributes, biomarkers, deltas.

Kept apart from the HTML (``report_html.py``) and the figures
(``figures.py``) so each piece is testable on small hand-made frames.
Inputs are the cohort tables of ``pipelines/tables.build_outputs``
(``<out>/tables/<name>.parquet``) and the store (attrs, stage records).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from petcohort.engine.errors import PetCohortError

__all__ = ["BIOMARKERS", "TABLES", "RESPONDER", "load_tables", "load_notes", "study_attrs", "study_frame",
           "biomarker_long", "pick_auto_source", "automatic_values", "response_frame", "failures_frame",
           "suv_provenance"]

log = logging.getLogger(__name__)

#: (column, display name) of the paper's four biomarkers (Fig. 4-6).
BIOMARKERS: tuple[tuple[str, str], ...] = (("sulpeak", "SULpeak"), ("tlg", "TLG"), ("pbi", "PBI"), ("pli", "PLI"))
TABLES = ("studies", "lesions", "segmentation", "segmentation_paired", "agreement", "response", "delong",
          "percist", "percist_confusion")
#: PERCIST 1.0 metabolic response categories counted as responders (METHODS.md: CR or PR).
RESPONDER = {"CMR": True, "PMR": True, "CR": True, "PR": True, "SMD": False, "PMD": False, "SD": False, "PD": False}
# The paper's automatic masks: U-Net_BL on baselines, U-Net_FU on follow-ups.
_BL_PREF = ("nnunet_bl", "nnunet")
_FU_PREF = ("nnunet_fu", "nnunet_bl", "nnunet")


def load_tables(store, out_dir: Path) -> dict[str, pd.DataFrame]:
    """Read ``<out_dir>/tables/*.parquet``; build them first when none exists.

    Returns the tables found (a name is absent when neither present nor buildable).
    """
    tdir = Path(out_dir) / "tables"
    if not any((tdir / f"{name}.parquet").exists() for name in TABLES):
        try:
            from petcohort.pipelines.tables import build_outputs
        except ModuleNotFoundError as exc:
            if exc.name != "petcohort.pipelines.tables":
                raise
            log.warning("cohort tables missing in %s and pipelines.tables is not available", tdir)
        else:
            log.info("building cohort tables into %s", out_dir)
            try:
                build_outputs(store, Path(out_dir))
            except PetCohortError as exc:
                # The report still renders; each table section then says it is missing.
                log.warning("cohort tables could not be built: %s", exc.reason)
    found = {}
    for name in TABLES:
        path = tdir / f"{name}.parquet"
        if path.exists():
            found[name] = pd.read_parquet(path)
    return found


def load_notes(out_dir: Path) -> dict[str, list[str]]:
    """``tables/notes.json`` of ``build_outputs`` (why a table is empty or partial); {} when absent."""
    path = Path(out_dir) / "tables" / "notes.json"
    if not path.exists():
        return {}
    try:
        notes = json.loads(path.read_text())
    except json.JSONDecodeError:
        log.warning("ignoring unreadable %s", path)
        return {}
    return {str(k): [str(t) for t in v] for k, v in notes.items() if isinstance(v, list)} \
        if isinstance(notes, dict) else {}


def _with_study_column(frame: pd.DataFrame) -> pd.DataFrame:
    if "study" not in frame.columns and frame.index.name == "study":
        frame = frame.reset_index()
    return frame


def study_attrs(store) -> dict[str, dict]:
    """Attrs of every study, read once (a 1,000-study store on S3 makes each read count)."""
    return {key: store.study_attrs(key) for key in store.study_keys()}


def study_frame(attrs: dict[str, dict]) -> pd.DataFrame:
    """One row per study from its attrs: study, patient, timepoint, days, site, scanner, truth_percist."""
    rows = []
    for key, a in attrs.items():
        truth = a.get("truth") or {}
        rows.append({"study": key, "patient": a.get("patient"), "timepoint": int(a.get("timepoint", 0)),
                     "days": a.get("days_since_baseline"), "site": a.get("site"), "scanner": a.get("scanner"),
                     "truth_percist": truth.get("percist") if isinstance(truth, dict) else None})
    cols = ["study", "patient", "timepoint", "days", "site", "scanner", "truth_percist"]
    return pd.DataFrame(rows, columns=cols)


def biomarker_long(studies: pd.DataFrame | None, records: dict | None = None) -> pd.DataFrame:
    """Biomarkers as a long frame: columns ``study``, ``source`` and one per biomarker.

    Accepts the ``studies`` table in long form (a ``source`` column) or wide
    form (``<biomarker>_<source>`` / ``<biomarker>__<source>`` columns). With
    no usable table, falls back to the ``quantify`` stage summaries in
    ``records`` (``summary["sources"]``: per-source dicts of biomarkers).
    """
    names = [b for b, _ in BIOMARKERS]
    if studies is not None and len(studies):
        frame = _with_study_column(studies)
        if "source" in frame.columns and "study" in frame.columns:
            cols = ["study", "source"] + [b for b in names if b in frame.columns]
            if len(cols) > 2:
                return frame[cols].copy()
        wide = []
        for col in frame.columns:
            for b in names:
                for sep in ("__", "_"):
                    if col.startswith(b + sep) and not col.endswith("_reason"):
                        wide.append((col, b, col[len(b) + len(sep):]))
                        break
        if wide and "study" in frame.columns:
            parts = []
            for source in sorted({s for _, _, s in wide}):
                part = pd.DataFrame({"study": frame["study"].to_numpy(), "source": source})
                for col, b, s in wide:
                    if s == source:
                        part[b] = pd.to_numeric(frame[col], errors="coerce").to_numpy()
                parts.append(part)
            return pd.concat(parts, ignore_index=True)
    rows = []
    for (key, stage), rec in (records or {}).items():
        if stage != "quantify" or rec.get("status") != "committed":
            continue
        summary = rec.get("summary") or {}
        # pipelines/stage_quantify.py: {"sources": {src: study dict}, "lesions": ...}
        per_source = summary.get("sources") if isinstance(summary.get("sources"), dict) else summary
        for source, vals in per_source.items():
            if isinstance(vals, dict) and any(b in vals for b in names):
                rows.append({"study": key, "source": source, **{b: vals.get(b) for b in names}})
    return pd.DataFrame(rows, columns=["study", "source", *names])


def pick_auto_source(sources, timepoint: int) -> str | None:
    """The automatic mask standing for "the network" at this timepoint (paper: U-Net_BL / U-Net_FU).

    Preference: ``nnunet_bl`` on baselines, ``nnunet_fu`` then ``nnunet_bl``
    on follow-ups, else the first other non-manual source by name.
    """
    return _pick(set(sources), _BL_PREF if int(timepoint) == 0 else _FU_PREF)


def _pick(sources: set[str], prefs: tuple[str, ...]) -> str | None:
    for s in prefs:
        if s in sources:
            return s
    others = sorted(s for s in sources if s != "manual")
    return others[0] if others else None


def automatic_values(long: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """Per study: the automatic-mask biomarkers (paper: U-Net_BL on BL, U-Net_FU on FU) and the manual ones.

    Returns columns study, patient, timepoint, days, auto_source, ``<b>``
    (automatic) and ``<b>_manual`` for each biomarker.
    """
    names = [b for b, _ in BIOMARKERS if b in long.columns]
    out = []
    merged = meta.set_index("study")
    for key, grp in long.groupby("study", sort=True):
        if key not in merged.index:
            continue
        m = merged.loc[key]
        tp = int(m["timepoint"])
        by_src = grp.set_index("source")
        src = pick_auto_source(by_src.index, tp)
        row: dict[str, Any] = {"study": key, "patient": m["patient"], "timepoint": tp, "days": m["days"],
                               "auto_source": src}
        for b in names:
            row[b] = _num(by_src.at[src, b]) if src is not None else None
            row[f"{b}_manual"] = _num(by_src.at["manual", b]) if "manual" in by_src.index else None
        out.append(row)
    return pd.DataFrame(out)


def _num(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(v) else v


def response_frame(auto: pd.DataFrame, meta: pd.DataFrame, percist: pd.DataFrame | None) -> tuple[pd.DataFrame, dict]:
    """Delta biomarkers (%) of every follow-up vs its baseline, with the response label.

    delta (%) = (FU - BL) / BL * 100 (METHODS.md); BL = 0 or missing gives a
    missing delta, counted in the returned ``undefined`` dict per biomarker.
    The label follows ``pipelines/tables`` (Table 2): the automated PERCIST
    call on the manual masks when the ``percist`` table has one, else the
    reference call ``truth.percist``; responders = CMR/PMR (CR/PR).
    """
    names = [b for b, _ in BIOMARKERS if b in auto.columns]
    calls: dict[str, str] = {}
    if percist is not None and len(percist):
        p = _with_study_column(percist)
        if "source" in p.columns:
            p = p[p["source"] == "manual"]
        if {"study", "category"} <= set(p.columns):
            calls = {str(k): str(v) for k, v in zip(p["study"], p["category"]) if isinstance(v, str)}
    if not calls:
        calls = {k: v for k, v in zip(meta["study"], meta["truth_percist"]) if isinstance(v, str)}
    undefined = {b: 0 for b in names}
    rows = []
    base = {r.patient: r for r in auto[auto["timepoint"] == 0].itertuples(index=False)}
    for r in auto[auto["timepoint"] > 0].itertuples(index=False):
        bl = base.get(r.patient)
        if bl is None:
            continue
        label = calls.get(r.study)
        row = {"study": r.study, "patient": r.patient, "timepoint": r.timepoint, "days": r.days,
               "category": label, "responder": RESPONDER.get(str(label).upper()) if label else None}
        for b in names:
            fu, b0 = getattr(r, b), getattr(bl, b)
            if fu is None or b0 is None or b0 == 0 or (isinstance(fu, float) and np.isnan(fu)):
                row[f"delta_{b}"] = None
                undefined[b] += 1
            else:
                row[f"delta_{b}"] = (fu - b0) / b0 * 100.0
        rows.append(row)
    return pd.DataFrame(rows), undefined


def failures_frame(records: dict) -> pd.DataFrame:
    """Failed study-stages: study, stage, reason, message (first 160 characters)."""
    rows = [{"study": k, "stage": s, "reason": r.get("reason"), "message": str(r.get("message") or "")[:160]}
            for (k, s), r in sorted(records.items()) if r.get("status") == "failed"]
    return pd.DataFrame(rows, columns=["study", "stage", "reason", "message"])


def suv_provenance(attrs: dict[str, dict]) -> pd.DataFrame:
    """SUV provenance per study (units, decay correction, reference time rule, factors, overrides)."""
    rows = []
    for key, a in attrs.items():
        suv = a.get("suv") or {}
        rows.append({"study": key, "source": a.get("source"), "units": suv.get("units"),
                     "decay_correction": suv.get("decay_correction"),
                     "reference_rule": suv.get("reference_rule"), "bw_factor": _num(suv.get("bw_factor")),
                     "lbm_factor": _num(suv.get("lbm_factor")), "sul_per_suvbw": _num(a.get("sul_per_suvbw")),
                     "sul_reason": a.get("sul_reason"),
                     "overrides": ", ".join(sorted(suv.get("overrides") or [])) or None})
    return pd.DataFrame(rows)
