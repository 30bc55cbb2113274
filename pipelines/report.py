"""The self-contained HTML cohort report (paper Figs. 3-6, Tables 1-2, PERCIST, provenance).

Every statistic shown comes from the cohort tables of ``pipelines/tables``
(``tables/*.parquet``): the figures draw the table rows and quote their
numbers, so a figure and a table cannot disagree (see ``report_data``). The
provenance section lists the resolved run configuration and, per stage, the
code fingerprints and parameters of the records the tables were built from.

``write_report(store_url, out_dir)`` writes one ``report.html``: inline CSS,
images as base64 PNG ``data:`` URIs, no scripts or external links. Sections
without data say what is missing and still render. Bounded for large cohorts:
at most :data:`MAX_MIP_PATIENTS` patients get MIP panels (an evenly spaced
sample over the sorted pseudonymous keys, stated in the report), at most
:data:`MAX_TRAJECTORIES` patients are drawn in the trajectory plot, and long
tables are cut (the full tables are in ``tables/``).
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from petcohort.pipelines import figures
from petcohort.pipelines import report_data as rd
from petcohort.pipelines.report_html import esc, figure, page, section, table_html

__all__ = ["write_report", "render_report", "MAX_MIP_PATIENTS", "MAX_TRAJECTORIES"]

log = logging.getLogger(__name__)

MAX_MIP_PATIENTS = 40
MAX_TRAJECTORIES = 200
_TABLE_SECTIONS = (("segmentation", "Table 1: segmentation (Dice, detection)"),
                   ("segmentation_paired", "Segmentation, paired comparison"),
                   ("agreement", "Agreement statistics (automatic vs manual)"),
                   ("response", "Table 2: response assessment (ROC, Youden cutoff)"),
                   ("delong", "DeLong tests between delta biomarkers"),
                   ("percist", "PERCIST calls with evidence"),
                   ("percist_confusion", "PERCIST confusion matrix"))
#: The paper's four biomarkers (Fig. 4, Table 2): the report shows these rows;
#: every biomarker is in the full tables under tables/.
PAPER_BIOMARKERS = ("sulpeak", "tlg", "pbi", "pli")
#: Columns of the PERCIST table shown in the report (the evidence in full is in tables/percist).
_PERCIST_COLUMNS = ("study", "source", "truth_percist", "category", "rule", "reason", "qc_flags",
                    "evidence.baseline_reference.source", "evidence.baseline_reference.mean",
                    "evidence.followup_reference.mean", "evidence.baseline_threshold",
                    "evidence.baseline_target.sulpeak", "evidence.followup_target.sulpeak",
                    "evidence.sulpeak_delta_abs", "evidence.sulpeak_delta_pct", "evidence.tlg5_delta_pct",
                    "evidence.new_lesions")


def _display_frame(name: str, frame: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The rows and columns of a cohort table shown in the report, and a note on what was left to tables/."""
    shown = frame
    for col in ("biomarker", "biomarker_a"):
        if col in frame.columns:
            mask = frame[col].isin(PAPER_BIOMARKERS)
            if "biomarker_b" in frame.columns:
                mask &= frame["biomarker_b"].isin(PAPER_BIOMARKERS)
            shown = frame[mask]
            break
    if name == "percist":
        shown = shown[[c for c in _PERCIST_COLUMNS if c in shown.columns]]
        shown = shown.rename(columns=lambda c: c.removeprefix("evidence."))
    if len(shown) < len(frame) or shown.shape[1] < frame.shape[1]:
        return shown, (f"Shown: {len(shown)} of {len(frame)} rows, {shown.shape[1]} of {frame.shape[1]} columns "
                       f"(the paper's biomarkers and the main evidence); the full table is tables/{name}.csv.")
    return shown, ""


def write_report(store_url: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write ``<out_dir>/report.html`` for the cohort store at ``store_url``.

    Parameters
    ----------
    store_url : str or path
        Cohort store (path, ``memory://name`` or fsspec URL), opened read-only.
    out_dir : str or path
        Output folder; its ``tables/`` are read, or built with
        ``pipelines.tables.build_outputs`` when absent.

    Returns
    -------
    Path of the written report.

    Raises
    ------
    StoreError
        ``NOT_A_STORE`` and the other store-opening reasons.
    """
    from petcohort.storage.store import CohortStore

    t0 = time.perf_counter()
    store = CohortStore.open(store_url, mode="r")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = rd.load_tables(store, out)
    text = render_report(store, tables, notes=rd.load_notes(out), out_dir=out)
    path = out / "report.html"
    tmp = out / ".report.html.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # readers never see a half-written report
    log.info("report written: %s (%.1f MB, %.1f s)", path, path.stat().st_size / 1e6, time.perf_counter() - t0)
    return path


def render_report(store, tables: dict[str, pd.DataFrame], *, notes: dict[str, list[str]] | None = None,
                  out_dir: str | os.PathLike | None = None) -> str:
    """The report HTML for an open ``store``, its cohort ``tables`` and the tables' ``notes``.

    ``out_dir`` (optional) is where ``run_config.yaml`` is looked for when the
    store holds no ``run_config`` JSON.
    """
    notes = notes or {}
    attrs = rd.study_attrs(store)
    meta = rd.study_frame(attrs)
    records = store.stage_records()
    long = rd.biomarker_long(tables.get("studies"), records)
    sections = [
        ("summary", "Cohort summary", _summary(meta, records)),
        ("fig-mips", "Coronal MIPs with contours (Fig. 3, 6a)", _mips(store, meta, long)),
        ("fig-agreement", "Automatic vs manual biomarkers (Fig. 4)", _agreement(tables)),
        ("fig-roc", "ROC of delta biomarkers (Fig. 5)", _roc(tables)),
        ("fig-trajectories", "Biomarker trajectories, % of baseline (Fig. 6b)", _trajectories(tables, meta)),
    ]
    expected = set(rd.table_names())
    table_sections = list(_TABLE_SECTIONS) + [(name, title) for name, title in rd.ACCURACY_TABLES
                                              if name in tables or name in expected]
    for name, title in table_sections:
        sid = f"table-{name.replace('_', '-')}"
        sections.append((sid, title, _table_section(sid, title, name, tables.get(name), notes)))
    sections.append(("provenance", "Provenance: run configuration and code fingerprints",
                     _provenance(store, tables.get("provenance"), out_dir)))
    prov = rd.suv_provenance(attrs)
    sections.append(("table-suv-provenance", "SUV provenance per study",
                     section("table-suv-provenance", "SUV provenance per study",
                             table_html(prov, table_id="suv_provenance", max_rows=1000)
                             if len(prov) else "", missing=None if len(prov) else "No studies in the store.")))
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return page("petcohort cohort report", sections, generated=stamp)


def _table_section(sid: str, title: str, name: str, frame: pd.DataFrame | None, notes: dict) -> str:
    """One cohort table as a report section (the tables' notes say why one is empty or partial)."""
    why = "; ".join(notes.get(name, []))
    if frame is None:
        return section(sid, title, "", missing="No table: the cohort statistics have not been computed "
                                               "(run `petcohort tables`).")
    if not len(frame):
        return section(sid, title, "", missing=f"The table is empty. {why}".strip())
    if frame.index.name is not None:
        frame = frame.reset_index()
    if name == "percist_confusion":
        body = _confusion_html(frame)
    else:
        shown, cut = _display_frame(name, frame)
        body = table_html(shown, table_id=name) + (f'<p class="note">{esc(cut)}</p>' if cut else "")
    body += f'<p class="note">{esc(why)}</p>' if why else ""
    return section(sid, title, body)


def _provenance(store, provenance: pd.DataFrame | None, out_dir) -> str:
    """The resolved run configuration and, per stage, the code fingerprints and params of its records."""
    import yaml  # noqa: PLC0415 - PyYAML is a dependency of the run configuration

    sid, title = "provenance", "Provenance: run configuration and code fingerprints"
    cfg = rd.run_config(store, None if out_dir is None else Path(out_dir))
    parts, missing = [], []
    if cfg is None:
        missing.append("No run configuration recorded (the store predates `petcohort run --config`).")
    else:
        text = yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False)
        parts.append('<h3>Resolved run configuration</h3><pre data-provenance="run_config">'
                     f"{esc(text)}</pre>")
    stages = rd.stage_provenance(provenance)
    if provenance is None:
        missing.append("No provenance table (run `petcohort tables`).")
    elif not len(stages):
        missing.append("No stage records.")
    else:
        parts.append("<h3>Code fingerprints and parameters per stage</h3>"
                     + table_html(stages, table_id="stage_provenance")
                     + '<p class="note">One row per stage: the distinct code fingerprints (first 16 hex digits) '
                       "and parameters of its committed records. The full digests per study-stage are in "
                       "tables/provenance.csv and the results.zarr attrs (stage_params, stage_code); each row of "
                       "tables/studies, lesions and percist names its record (record, code_hash).</p>")
    return section(sid, title, "".join(parts), missing=" ".join(missing) or None)


def _confusion_html(frame: pd.DataFrame) -> str:
    """The PERCIST confusion as one truth x call matrix per source (long table when columns differ)."""
    if not {"source", "truth", "call", "count"} <= set(frame.columns):
        return table_html(frame, table_id="percist_confusion")
    order = ["CMR", "PMR", "SMD", "PMD"]
    parts = []
    for source, g in frame.groupby("source", sort=True):
        m = g.pivot_table(index="truth", columns="call", values="count", aggfunc="sum", fill_value=0)
        rows = [c for c in order if c in m.index] + sorted(set(m.index) - set(order))
        cols = [c for c in order if c in m.columns] + sorted(set(m.columns) - set(order))
        m = m.loc[rows, cols].astype(int)
        m.index.name = "truth \\ call"
        parts.append(f"<h3>{esc(source)}</h3>" + table_html(m.reset_index(), table_id=f"percist_confusion_{source}"))
    return "".join(parts)


def _summary(meta: pd.DataFrame, records: dict) -> str:
    fails = rd.failures_frame(records)
    counts = pd.DataFrame([{"patients": meta["patient"].nunique(), "studies": len(meta),
                            "follow-ups": int((meta["timepoint"] > 0).sum()), "sites": meta["site"].nunique(),
                            "scanners": meta["scanner"].nunique(), "stage records": len(records),
                            "failed study-stages": len(fails)}])
    parts = [table_html(counts, table_id="cohort_counts")]
    if len(meta):
        by_site = meta.groupby(["site", "scanner"], dropna=False).agg(
            patients=("patient", "nunique"), studies=("study", "count")).reset_index()
        parts.append(table_html(by_site, table_id="sites_scanners"))
    if len(fails):
        reasons = fails.groupby(["stage", "reason"]).size().rename("count").reset_index()
        parts.append("<h3>Failures by reason code</h3>" + table_html(reasons, table_id="failure_reasons"))
        parts.append(table_html(fails, table_id="failures", max_rows=100))
    else:
        parts.append('<p class="note" data-failures="0">No failed study-stages.</p>')
    return section("summary", "Cohort summary", "".join(parts),
                   missing=None if len(meta) else "The store holds no studies.")


def _mips(store, meta: pd.DataFrame, long: pd.DataFrame) -> str:
    patients = sorted(p for p in meta["patient"].dropna().unique())
    if not patients:
        return section("fig-mips", "Coronal MIPs", "", missing="No studies.")
    chosen = patients
    if len(patients) > MAX_MIP_PATIENTS:
        idx = np.unique(np.linspace(0, len(patients) - 1, MAX_MIP_PATIENTS).round().astype(int))
        chosen = [patients[i] for i in idx]
    blocks, no_qc = [], 0
    for pat in chosen:
        panels = []
        for r in meta[meta["patient"] == pat].sort_values("timepoint").itertuples(index=False):
            if not store.has_array(r.study, "qc/mip_pet"):
                no_qc += 1
                continue
            names = {n[len("qc/mip_"):] for n in store.array_names(r.study)
                     if n.startswith("qc/mip_") and n != "qc/mip_pet"}
            # ground truth plus the one automatic mask the biomarkers use: more contours are unreadable
            shown = [s for s in ("manual", rd.pick_auto_source(names, r.timepoint)) if s in names]
            masks = {s: store.read_array(r.study, f"qc/mip_{s}") for s in shown}
            rec = store.stage_record(r.study, "qc") or {}
            sz, sx = (rec.get("summary") or {}).get("mip_spacing_mm") or [1.0, 1.0]
            title = (f"{r.study}\n{'BL' if r.timepoint == 0 else f'FU{r.timepoint}'}"
                     + _bm_caption(long, r.study, r.timepoint) + _dice_caption(store, r.study, shown))
            pet = store.read_array(r.study, "qc/mip_pet")
            panels.append(figures.MipPanel(title, pet, masks, float(sz) / float(sx)))
        if panels:
            uri = figures.to_data_uri(figures.mip_row(panels))
            blocks.append(figure(f"mip-{pat}", uri, f"Patient {pat}: baseline and follow-ups (green = manual "
                                                    "ground truth; other colours = automatic sources)"))
    note = (f'<p class="note" data-mip-patients="{len(chosen)}">Showing {len(chosen)} of {len(patients)} '
            "patients" + (" (evenly spaced sample over the sorted pseudonymous keys)" if len(chosen) < len(patients)
                          else "") + ". Grey scale: SUVbw 0-10, inverted.</p>")
    missing = None
    if not blocks:
        missing = "No QC MIPs in the store: the qc stage has not committed for any shown study."
    elif no_qc:
        missing = f"{no_qc} shown studies have no QC MIP (qc stage not committed)."
    return section("fig-mips", "Coronal MIPs with contours (Fig. 3, 6a)",
                   note + '<div class="mips">' + "".join(blocks) + "</div>", missing=missing)


def _dice_caption(store, key: str, shown: list[str]) -> str:
    """Dice of the drawn automatic mask vs the manual one, from the ``evaluate`` summary (paper Fig. 3)."""
    auto = [s for s in shown if s != "manual"]
    rec = store.stage_record(key, "evaluate") or {}
    if not auto or rec.get("status") != "committed":
        return ""
    dice = (((rec.get("summary") or {}).get("sources") or {}).get(auto[0]) or {}).get("dice")
    return f", DSC {dice:.2f}" if isinstance(dice, (int, float)) else ""


def _bm_caption(long: pd.DataFrame, key: str, timepoint: int) -> str:
    """SULpeak and TLG of the automatic mask drawn on the panel (paper Fig. 6a)."""
    if not len(long):
        return ""
    rows = long[long["study"] == key].set_index("source")
    src = rd.pick_auto_source(rows.index, timepoint)
    if src is None:
        return ""
    r = rows.loc[src]
    parts = [f"{lab} {float(r[b]):.3g}" for b, lab in rd.BIOMARKERS[:2] if b in r and pd.notna(r[b])]
    return ("\n" + ", ".join(parts)) if parts else ""


def _agreement(tables: dict[str, pd.DataFrame]) -> str:
    """Fig. 4: the ``agreement`` rows of the figure source (acquisitions ``all``) and their value pairs."""
    title = "Automatic vs manual biomarkers (Fig. 4)"
    source, panels, rows, notes = rd.agreement_panels(tables.get("agreement"), tables.get("studies"))
    if source is None:
        return section("fig-agreement", title, "", missing="No agreement statistics yet (agreement or studies "
                       "table missing or empty: quantify stage or `petcohort tables` not run).")
    missing = "; ".join(notes) or None
    if not panels:
        return section("fig-agreement", title, "", missing=missing or "No data.")
    body = figure("agreement-scatter", figures.to_data_uri(figures.agreement_scatter(panels)),
                  f"x: manual (ground-truth) masks, y: automatic masks ({source}); red line = identity. "
                  "Statistics: tables/agreement.csv, acquisitions = all.")
    body += table_html(pd.DataFrame(rows), table_id="agreement_summary")
    return section("fig-agreement", title, body, missing=missing)


def _roc(tables: dict[str, pd.DataFrame]) -> str:
    """Fig. 5: the ``response`` rows (Table 2) of the figure source, curves through its ``deltas``."""
    title = "ROC of delta biomarkers (Fig. 5)"
    response, deltas = tables.get("response"), tables.get("deltas")
    source, series, rows, notes = rd.roc_series(response, deltas)
    if source is None:
        why = ("No follow-up studies with a baseline, biomarkers and responder labels."
               if response is not None and deltas is not None
               else "No response/deltas tables (run `petcohort tables`).")
        return section("fig-roc", title, "", missing=why)
    if not series:
        return section("fig-roc", title, "", missing="; ".join(notes) or "No delta biomarkers.")
    label_source = ", ".join(sorted(set(response.loc[response["source"] == source, "label_source"].astype(str))))
    body = figure("roc-curves", figures.to_data_uri(figures.roc_figure(series)),
                  f"Deltas of the {source} biomarkers. Responder = PERCIST CMR/PMR (labels: {label_source}; "
                  "percist:manual = the automated call on the manual masks, truth = the reference call). "
                  "A follow-up is called responder when its delta is at or below the cutoff (cutoff at a data "
                  "value). AUC, interval, cutoff, sensitivity and specificity: tables/response.csv.")
    body += table_html(pd.DataFrame(rows), table_id="roc_summary")
    return section("fig-roc", title, body, missing="; ".join(notes) or None)


def _trajectories(tables: dict[str, pd.DataFrame], meta: pd.DataFrame) -> str:
    """Fig. 6b: % of baseline (100 + delta) per patient, from the ``deltas`` table."""
    title = "Biomarker trajectories, % of baseline (Fig. 6b)"
    if not len(meta) or not (meta["timepoint"] > 0).any():
        return section("fig-trajectories", title, "", missing="No follow-up studies: no trajectories.")
    source, lines, n = rd.trajectory_lines(tables.get("deltas"), meta, max_patients=MAX_TRAJECTORIES)
    if source is None:
        return section("fig-trajectories", title, "", missing="No deltas table (run `petcohort tables`) or no "
                                                              "follow-up with a baseline.")
    panels = [{"label": f"{label} ({source}), {len(lines[b])} patients", "lines": lines[b]}
              for b, label in rd.BIOMARKERS if b in lines]
    if not any(p["lines"] for p in panels):
        return section("fig-trajectories", title, "", missing="No patient has a defined delta (baseline 0 or "
                                                              "missing).")
    body = figure("trajectories", figures.to_data_uri(figures.trajectories(panels)),
                  f"One line per patient (at most {MAX_TRAJECTORIES}, first by sorted key; {n} considered); "
                  "% of baseline = 100 + delta from tables/deltas.csv; dashed line = baseline.")
    return section("fig-trajectories", title, body)
