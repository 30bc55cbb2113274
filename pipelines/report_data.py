"""Data gathering for the cohort report: tables, study attributes, figure inputs, provenance.

Kept apart from the HTML (``report_html.py``) and the figures
(``figures.py``) so each piece is testable on small hand-made frames.
Inputs are the cohort tables of ``pipelines/tables.build_outputs``
(``<out>/tables/<name>.parquet``) and the store (attrs, stage records).

One source for each number: every statistic the report shows (Lin's CCC,
Spearman, AUC and its interval, Youden cutoff, sensitivity, specificity,
deltas, PERCIST calls) is read from those tables, never recomputed here. The
figures only draw what the tables hold: the agreement scatter plots the value
pairs of the ``agreement`` rows (:func:`petcohort.pipelines.tables.agreement_pairs`),
the ROC curves and trajectories plot the ``deltas`` table the ``response``
rows were computed from, and every legend and title quotes the table row.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from petcohort.engine.errors import PetCohortError
from petcohort.pipelines.figures import RocSeries

__all__ = ["BIOMARKERS", "FIGURE_SOURCES", "ACCURACY_TABLES", "load_tables", "load_notes", "study_attrs",
           "study_frame", "biomarker_long", "pick_auto_source", "figure_source", "table_names", "agreement_panels",
           "roc_series", "trajectory_lines", "failures_frame", "suv_provenance", "run_config",
           "stage_provenance"]

log = logging.getLogger(__name__)

#: (column, display name) of the paper's four biomarkers (Fig. 4-6).
BIOMARKERS: tuple[tuple[str, str], ...] = (("sulpeak", "SULpeak"), ("tlg", "TLG"), ("pbi", "PBI"), ("pli", "PLI"))
#: The source the figures show, in order of preference: the paper's automatic masks
#: (``nnunet_bl+fu`` = U-Net_BL on baselines, U-Net_FU on follow-ups; see ``tables.COMPOSITES``).
FIGURE_SOURCES = ("nnunet_bl+fu", "nnunet_fu", "nnunet_bl")
#: Accuracy tables rendered as report sections when the cohort tables hold them.
ACCURACY_TABLES = (("tracking_accuracy", "Lesion tracking accuracy"),
                   ("percist_accuracy", "PERCIST call accuracy"))
# The paper's automatic masks: U-Net_BL on baselines, U-Net_FU on follow-ups.
_BL_PREF = ("nnunet_bl", "nnunet")
_FU_PREF = ("nnunet_fu", "nnunet_bl", "nnunet")


def table_names() -> tuple[str, ...]:
    """The tables ``build_outputs`` writes (empty when ``pipelines.tables`` is not installed)."""
    try:
        from petcohort.pipelines.tables import TABLES
    except ModuleNotFoundError as exc:
        if exc.name != "petcohort.pipelines.tables":
            raise
        return ()
    return tuple(TABLES)


def load_tables(store, out_dir: Path) -> dict[str, pd.DataFrame]:
    """Read ``<out_dir>/tables/*.parquet``; build them first when none exists.

    Returns ``{name: frame}`` for every table found (a name is absent when neither present nor buildable).
    """
    tdir = Path(out_dir) / "tables"
    if not any(tdir.glob("*.parquet")):
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
    # every table present, also those a newer tables module adds (e.g. the accuracy tables)
    return {path.stem: pd.read_parquet(path) for path in sorted(tdir.glob("*.parquet"))}


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


def figure_source(sources: Iterable[Any]) -> str | None:
    """The source the figures show: the first of :data:`FIGURE_SOURCES`, else the first other
    non-manual source by name, else ``manual``; None when there is none."""
    names = {str(s) for s in sources if isinstance(s, str) and s}
    for s in FIGURE_SOURCES:
        if s in names:
            return s
    others = sorted(names - {"manual"})
    return others[0] if others else ("manual" if "manual" in names else None)


def _num(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(v) else v


def _value(row: pd.Series, name: str) -> float | None:
    """A numeric cell of a table row; None when absent, None or NaN."""
    return _num(row.get(name))


def _text(value: Any) -> str | None:
    """A text cell (e.g. a reason code); None for None/NaN."""
    return value if isinstance(value, str) and value else None


def _f2(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def agreement_panels(agreement: pd.DataFrame | None, studies: pd.DataFrame | None
                     ) -> tuple[str | None, list[dict], list[dict], list[str]]:
    """Fig. 4 inputs from the ``agreement`` and ``studies`` tables.

    The figure source's ``acquisitions == "all"`` rows give every number
    (panel titles and the summary rows); the points are the value pairs
    those rows were computed from (``tables.agreement_pairs``).

    Returns
    -------
    source, panels, rows, notes
        ``panels``: dicts ``label``, ``x`` (manual), ``y`` (automatic),
        ``title``; ``rows``: the summary table rows; ``notes``: what is missing.
    """
    from petcohort.pipelines.tables import REFERENCE, agreement_pairs

    if agreement is None or studies is None or not len(agreement) or not len(studies):
        return None, [], [], []
    source = figure_source(agreement["source"].unique())
    rows_of = agreement[(agreement["source"] == source) & (agreement["acquisitions"] == "all")]
    rows_of = rows_of.drop_duplicates("biomarker").set_index("biomarker")
    panels, rows, notes = [], [], []
    for b, label in BIOMARKERS:
        if b not in rows_of.index:
            notes.append(f"{label}: not in the agreement table")
            continue
        r = rows_of.loc[b]
        pair = agreement_pairs(studies, b, source, "all").dropna()
        n = int(r["n"])
        if n == 0:
            notes.append(f"{label}: no study with both manual and automatic values")
            continue
        ccc, rho = _value(r, "ccc"), _value(r, "spearman_rho")
        if ccc is None:
            title = f"{label}: statistics unavailable ({_text(r.get('reason'))}) (n={n})"
        else:
            title = (f"{label}: Lin's CCC {_f2(ccc)} [{_f2(_value(r, 'ccc_ci_low'))}, "
                     f"{_f2(_value(r, 'ccc_ci_high'))}], Spearman {_f2(rho)} (n={n})")
        if len(pair) != n:  # the tables are stale against each other: say so rather than mislead
            notes.append(f"{label}: the studies table holds {len(pair)} pairs, the agreement row n={n}")
        rows.append({"biomarker": label, "source": source, "n": n, "Lin's CCC": ccc,
                     "CCC CI low": _value(r, "ccc_ci_low"), "CCC CI high": _value(r, "ccc_ci_high"),
                     "Spearman rho": rho, "Spearman p": _value(r, "spearman_p"), "reason": _text(r.get("reason"))})
        panels.append({"label": label, "x": pair[REFERENCE].to_numpy(float), "y": pair[source].to_numpy(float),
                       "title": title})
    return source, panels, rows, notes


def roc_series(response: pd.DataFrame | None, deltas: pd.DataFrame | None
               ) -> tuple[str | None, list[RocSeries], list[dict], list[str]]:
    """Fig. 5 inputs from the ``response`` (Table 2) and ``deltas`` tables.

    AUC, its interval, the Youden cutoff, sensitivity and specificity come
    from the figure source's ``response`` rows; the curve is drawn through
    the labelled deltas those rows were computed from (score = -delta, as in
    Table 2), and its Youden point is the row's (1 - specificity, sensitivity).

    Returns
    -------
    source, series, rows, notes
    """
    from petcohort.engine.stats.roc import roc_curve

    if response is None or deltas is None or not len(response) or not len(deltas):
        return None, [], [], []
    source = figure_source(response["source"].unique())
    table = response[response["source"] == source].drop_duplicates("biomarker").set_index("biomarker")
    d = deltas[deltas["source"] == source]
    labelled = d[d["responder"].notna()]
    series, rows, notes = [], [], []
    for b, label in BIOMARKERS:
        col = f"delta_{b}"
        if b not in table.index or col not in d.columns:
            notes.append(f"\u0394{label}: not in the response table")
            continue
        r = table.loc[b]
        auc = _value(r, "auc")
        if auc is None:
            notes.append(f"\u0394{label}: {_text(r.get('reason'))} (n={int(r['n'])})")
            continue
        used = labelled[[col, "responder"]].dropna()
        y = used["responder"].astype(bool).to_numpy()
        try:
            curve = roc_curve(y, -used[col].astype(float).to_numpy())  # a larger decrease means response
        except PetCohortError as exc:
            notes.append(f"\u0394{label}: curve not drawn ({exc.reason})")
            continue
        if len(used) != int(r["n"]):
            notes.append(f"\u0394{label}: the deltas table holds {len(used)} labelled deltas, "
                         f"the response row n={int(r['n'])}")
        cut, sens, spec = _value(r, "cutoff_percent"), _value(r, "sensitivity"), _value(r, "specificity")
        lo, hi = _value(r, "auc_ci_low"), _value(r, "auc_ci_high")
        cut_text = "n/a" if cut is None else f"{cut:.0f}%"
        series.append(RocSeries(f"\u0394{label} AUC {_f2(auc)} [{_f2(lo)}, {_f2(hi)}], cutoff {cut_text}",
                                curve.fpr, curve.tpr, np.nan if spec is None else 1.0 - spec,
                                np.nan if sens is None else sens))
        rows.append({"biomarker": f"\u0394{label}", "source": source, "n": int(r["n"]), "AUC": auc, "CI low": lo,
                     "CI high": hi, "Youden cutoff (%)": cut, "sensitivity": sens, "specificity": spec,
                     "undefined deltas (BL 0 or missing)": int(r["n_missing"])})
    return source, series, rows, notes


def trajectory_lines(deltas: pd.DataFrame | None, meta: pd.DataFrame, *, max_patients: int
                     ) -> tuple[str | None, dict[str, list[tuple[np.ndarray, np.ndarray]]], int]:
    """Fig. 6b inputs: per biomarker, one (days, % of baseline) line per patient, from the ``deltas`` table.

    % of baseline = 100 + delta (the baseline itself is 100 at its own day);
    undefined deltas leave the point out.

    Returns
    -------
    source, lines, patients
        ``lines``: ``{biomarker: [(days, percent), ...]}``; ``patients``: how many were considered
        (at most ``max_patients``, first by sorted key).
    """
    if deltas is None or not len(deltas) or not len(meta):
        return None, {}, 0
    source = figure_source(deltas["source"].unique())
    d = deltas[deltas["source"] == source].merge(meta[["study", "patient", "timepoint", "days"]], on="study")
    days_of = meta.set_index("study")["days"]
    patients = sorted(d["patient"].dropna().unique())[:max_patients]
    lines: dict[str, list] = {}
    for b, _label in BIOMARKERS:
        col = f"delta_{b}"
        if col not in d.columns:
            continue
        out = []
        for pat in patients:
            g = d[(d["patient"] == pat) & d[col].notna()].sort_values("timepoint")
            if not len(g):
                continue
            x0 = _num(days_of.get(g["baseline"].iloc[0])) or 0.0
            days = pd.to_numeric(g["days"], errors="coerce").fillna(g["timepoint"].astype(float))
            out.append((np.r_[x0, days.to_numpy(float)], np.r_[100.0, 100.0 + g[col].to_numpy(float)]))
        lines[b] = out
    return source, lines, len(patients)


def run_config(store, out_dir: Path | None = None) -> dict | None:
    """The resolved run configuration: cohort JSON ``run_config``, else ``<out_dir>/run_config.yaml``."""
    cfg = store.read_json("run_config") if hasattr(store, "read_json") else None
    if isinstance(cfg, dict):
        return cfg
    path = None if out_dir is None else Path(out_dir) / "run_config.yaml"
    if path is not None and path.exists():
        import yaml  # noqa: PLC0415 - only needed for this fallback

        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            log.warning("ignoring unreadable %s", path.name)
            return None
        return data if isinstance(data, dict) else None
    return None


def stage_provenance(provenance: pd.DataFrame | None) -> pd.DataFrame:
    """Per stage, from the ``provenance`` table: record counts, the distinct code fingerprints and params."""
    cols = ["stage", "records", "committed", "failed", "code fingerprints", "params"]
    if provenance is None or not len(provenance):
        return pd.DataFrame(columns=cols)
    rows = []
    for stage, g in provenance.groupby("stage", sort=True):
        done = g[g["status"] == "committed"]
        codes = sorted({str(c) for c in done["code_hash"].dropna()})
        params = sorted({str(p) for p in done["params"].dropna()})
        rows.append({"stage": stage, "records": len(g), "committed": len(done),
                     "failed": int((g["status"] == "failed").sum()),
                     # 16 hex digits tell fingerprints apart; the full digests are in tables/provenance
                     "code fingerprints": "; ".join(c[:16] for c in codes) or None,
                     "params": " | ".join(params) or None})
    return pd.DataFrame(rows, columns=cols)

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
