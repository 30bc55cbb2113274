"""Cohort table builders from the ``quantify`` and ``evaluate`` records: the per-study tables and the statistics
against the manual reference.

Tables ``studies`` and ``lesions`` (one row per study x source / per lesion),
``segmentation`` and ``segmentation_paired`` (paper Table 1), ``agreement``
(automatic vs :data:`REFERENCE`), ``response``, ``delong`` and ``deltas``
(paper Table 2 and the deltas it was computed from). Definitions:
docs/methods.md "Segmentation evaluation" and "Statistics". Also the pieces
every table builder shares (:data:`META_COLUMNS`, :func:`add_note`,
:func:`safe_ratio`). Assembled and written by :mod:`petcohort.pipelines.tables`.
"""
from __future__ import annotations

import itertools
import json
import logging
from typing import Any

import numpy as np
import pandas as pd

from petcohort.engine.errors import StatsError
from petcohort.engine.stats import response as resp
from petcohort.engine.stats.agreement import ks_normality, lins_ccc, spearman
from petcohort.engine.stats.ranks import wilcoxon_signed_rank
from petcohort.pipelines.tables_gather import Cohort, flatten

__all__ = ["REFERENCE", "COMPOSITES", "META_COLUMNS", "add_note", "safe_ratio", "studies_frame", "lesions_frame",
           "segmentation_frames", "biomarker_columns", "with_composites", "agreement_pairs", "agreement_frame",
           "response_frames"]

# notes are logged under the tables module's logger, as before the builders moved here
log = logging.getLogger("petcohort.pipelines.tables")

REFERENCE = "manual"
#: Response sources made of two masks (paper: U-Net_BL on baselines, U-Net_FU on follow-ups).
COMPOSITES = {"nnunet_bl+fu": ("nnunet_bl", "nnunet_fu")}
#: The per-study columns every per-study table starts with (from :meth:`Cohort.meta`).
META_COLUMNS = ["study", "patient", "timepoint", "days", "site", "scanner"]
_ACQ = {"baseline": lambda tp: tp == 0, "follow-up": lambda tp: tp > 0, "all": lambda tp: True}


def add_note(notes: dict[str, list[str]], table: str, text: str) -> None:
    """Append ``text`` to ``notes[table]`` (written to ``tables/notes.json``) and log it."""
    notes.setdefault(table, []).append(text)
    log.info("%s: %s", table, text)


# -- studies and lesions -----------------------------------------------------------------------
def studies_frame(c: Cohort) -> pd.DataFrame:
    """One row per study x source with every quantify study biomarker (and ``*_reason``)."""
    rows = [{**c.meta(key), "source": src, **flatten(vals)}
            for key, summary in sorted(c.summaries("quantify").items())
            for src, vals in sorted((summary.get("sources") or {}).items())]
    return pd.DataFrame(rows, columns=None if rows else META_COLUMNS + ["source"])


def lesions_frame(c: Cohort) -> pd.DataFrame:
    """One row per lesion (quantify ``lesions``) with its tracking status when ``track`` ran."""
    status = c.track_status()
    rows = []
    for key, summary in sorted(c.summaries("quantify").items()):
        for src, lesions in sorted((summary.get("lesions") or {}).items()):
            for lesion in lesions or []:
                row = {**c.meta(key), "source": src, **flatten(lesion)}
                row.update(status.get((key, src, lesion.get("lesion")), {}))
                rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else META_COLUMNS + ["source", "lesion"])


# -- segmentation (Table 1) --------------------------------------------------------------------
def safe_ratio(num: float, den: float) -> float | None:
    """``num / den`` as a float, None when ``den`` is not positive."""
    return float(num / den) if den > 0 else None


def segmentation_frames(c: Cohort, notes: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 1 per source and acquisition, and the paired Dice comparison on follow-ups."""
    per = [{"study": key, "timepoint": c.meta(key)["timepoint"], "source": src, **m}
           for key, summary in c.summaries("evaluate").items()
           for src, m in (summary.get("sources") or {}).items()]
    cols = ["source", "acquisitions", "n", "n_dice_missing", "mean_dice", "sd_dice", "global_dice", "recall",
            "precision", "fp_volume_ml", "fn_volume_ml"]
    paired_cols = ["source_a", "source_b", "acquisitions", "n", "mean_difference", "wilcoxon_statistic",
                   "wilcoxon_p", "method", "reason"]
    if not per:
        add_note(notes, "segmentation", "no committed evaluate records: no segmentation metrics")
        return pd.DataFrame(columns=cols), pd.DataFrame(columns=paired_cols)
    ev = pd.DataFrame(per)
    ev["acquisitions"] = np.where(ev["timepoint"] > 0, "follow-up", "baseline")
    rows = []
    for (src, acq), g in ev.groupby(["source", "acquisitions"], sort=True):
        dice = pd.to_numeric(g["dice"], errors="coerce").dropna()
        tot = {k: float(pd.to_numeric(g.get(k), errors="coerce").fillna(0).sum())
               for k in ("intersect", "truth_voxels", "pred_voxels", "tp", "fn", "tp_pred", "fp")}
        rows.append({"source": src, "acquisitions": acq, "n": int(dice.size), "n_dice_missing": int(len(g) - dice.size),
                     "mean_dice": float(dice.mean()) if dice.size else None,
                     "sd_dice": float(dice.std(ddof=1)) if dice.size > 1 else None,
                     # pooled voxel-wise over the studies (docs/methods.md "global Dice")
                     "global_dice": safe_ratio(2 * tot["intersect"], tot["truth_voxels"] + tot["pred_voxels"]),
                     "recall": safe_ratio(tot["tp"], tot["tp"] + tot["fn"]),
                     "precision": safe_ratio(tot["tp_pred"], tot["tp_pred"] + tot["fp"]),
                     "fp_volume_ml": float(pd.to_numeric(g["fp_volume_ml"], errors="coerce").mean()),
                     "fn_volume_ml": float(pd.to_numeric(g["fn_volume_ml"], errors="coerce").mean())})
    add_note(notes, "segmentation", "recall/precision pool lesion counts over studies; fp/fn volumes are "
                                 "means per study (mL); sd_dice uses ddof=1")
    fu = ev[ev["acquisitions"] == "follow-up"].pivot_table(index="study", columns="source", values="dice",
                                                           aggfunc="first")
    paired = []
    for a, b in itertools.combinations(sorted(fu.columns), 2):
        both = fu[[a, b]].apply(pd.to_numeric, errors="coerce").dropna()
        row: dict[str, Any] = dict.fromkeys(paired_cols)
        row.update(source_a=a, source_b=b, acquisitions="follow-up", n=int(len(both)))
        if len(both):
            row["mean_difference"] = float((both[a] - both[b]).mean())
        try:
            w = wilcoxon_signed_rank(both[a], both[b])
            row.update(wilcoxon_statistic=w.statistic, wilcoxon_p=w.p, method=w.method)
        except StatsError as exc:
            row["reason"] = exc.reason
        paired.append(row)
    if not paired:
        add_note(notes, "segmentation_paired", "fewer than two automatic sources on follow-ups")
    return pd.DataFrame(rows, columns=cols), pd.DataFrame(paired, columns=paired_cols)


# -- agreement ---------------------------------------------------------------------------------
def biomarker_columns(studies: pd.DataFrame) -> list[str]:
    """The ``studies`` columns that are biomarkers with at least one numeric value (no meta, reason or kernel)."""
    skip = set(META_COLUMNS) | {"source", "kernel_voxels", "kernel_ml"}
    return [c for c in studies.columns if c not in skip and not c.endswith("_reason")
            and pd.to_numeric(studies[c], errors="coerce").notna().any()]


def with_composites(wide: pd.DataFrame, timepoint: pd.Series) -> pd.DataFrame:
    """Add one column per :data:`COMPOSITES` source: its baseline part on baselines, its follow-up part after.

    ``wide`` has one row per study and one column per source; ``timepoint`` maps study -> timepoint.
    """
    out = wide.copy()
    followup = (timepoint.reindex(out.index) > 0).to_numpy()
    for name, (bl, fu) in COMPOSITES.items():
        if bl in out.columns and fu in out.columns:
            out[name] = np.where(followup, out[fu].to_numpy(dtype=object), out[bl].to_numpy(dtype=object))
    return out


def _wide(studies: pd.DataFrame, biomarker: str, timepoint: pd.Series) -> pd.DataFrame:
    frame = studies.pivot_table(index="study", columns="source", values=biomarker, aggfunc="first")
    return with_composites(frame, timepoint)


def _pairs(wide: pd.DataFrame, timepoint: pd.Series, source: str, acquisitions: str) -> pd.DataFrame:
    keep = timepoint.reindex(wide.index).map(_ACQ[acquisitions]).astype(bool)
    return wide[[source, REFERENCE]][keep].apply(pd.to_numeric, errors="coerce")


def agreement_pairs(studies: pd.DataFrame, biomarker: str, source: str, acquisitions: str = "all") -> pd.DataFrame:
    """The (automatic, manual) value pairs behind one ``agreement`` row, one row per study (NaN = missing).

    Parameters
    ----------
    studies : the ``studies`` table (long form: ``study``, ``source``, ``timepoint``, biomarker columns).
    biomarker, source : the row's biomarker and automatic source (a :data:`COMPOSITES` name works too).
    acquisitions : ``"baseline"``, ``"follow-up"`` or ``"all"``.

    Returns
    -------
    DataFrame indexed by study with columns ``source`` and :data:`REFERENCE`; empty when either is absent.
    """
    empty = pd.DataFrame(columns=[source, REFERENCE], dtype=float)
    if studies is None or studies.empty or biomarker not in studies.columns:
        return empty
    tp = studies.groupby("study")["timepoint"].first()
    wide = _wide(studies, biomarker, tp)
    if source not in wide.columns or REFERENCE not in wide.columns:
        return empty
    return _pairs(wide, tp, source, acquisitions)


def agreement_frame(studies: pd.DataFrame, notes: dict) -> pd.DataFrame:
    """Per biomarker, automatic source and acquisition group: CCC, Spearman, Wilcoxon, KS vs manual."""
    cols = ["biomarker", "source", "reference", "acquisitions", "n", "n_missing", "ccc", "ccc_ci_low",
            "ccc_ci_high", "spearman_rho", "spearman_p", "wilcoxon_p", "ks_p_difference", "reason"]
    if studies.empty or REFERENCE not in set(studies.get("source", [])):
        add_note(notes, "agreement", f"no {REFERENCE!r} source: no agreement statistics")
        return pd.DataFrame(columns=cols)
    tp = studies.groupby("study")["timepoint"].first()
    wide = {b: _wide(studies, b, tp) for b in biomarker_columns(studies)}
    rows = []
    for b, frame in wide.items():
        for src in [s for s in frame.columns if s != REFERENCE]:
            if REFERENCE not in frame.columns:
                continue
            for acq in _ACQ:
                sel = _pairs(frame, tp, src, acq)
                ok = sel.dropna()
                row: dict[str, Any] = dict.fromkeys(cols)
                row.update(biomarker=b, source=src, reference=REFERENCE, acquisitions=acq, n=len(ok),
                           n_missing=int(len(sel) - len(ok)))
                reasons = []
                for name, fn in (("ccc", lambda: lins_ccc(ok[src], ok[REFERENCE])),
                                 ("spearman", lambda: spearman(ok[src], ok[REFERENCE])),
                                 ("wilcoxon", lambda: wilcoxon_signed_rank(ok[src], ok[REFERENCE])),
                                 ("ks", lambda: ks_normality(ok[src] - ok[REFERENCE]))):
                    try:
                        r = fn()
                    except StatsError as exc:
                        reasons.append(f"{name}:{exc.reason}")
                        continue
                    if name == "ccc":
                        row.update(ccc=r.ccc, ccc_ci_low=r.ci_low, ccc_ci_high=r.ci_high)
                    elif name == "spearman":
                        row.update(spearman_rho=r.rho, spearman_p=r.p)
                    elif name == "wilcoxon":
                        row["wilcoxon_p"] = r.p
                    else:
                        row["ks_p_difference"] = r.p
                row["reason"] = ";".join(reasons) or None
                rows.append(row)
    add_note(notes, "agreement", "pairs with a missing value on either side are dropped (n_missing); KS tests the "
                              "automatic - manual differences against a fitted normal, no Lilliefors correction")
    return pd.DataFrame(rows, columns=cols)


# -- response (Table 2) and DeLong -------------------------------------------------------------
def _labels(c: Cohort, notes: dict) -> tuple[dict[str, bool | None], str | None]:
    percist = c.summaries("percist")
    calls = {k: ((s.get("sources") or {}).get(REFERENCE) or {}).get("category") for k, s in percist.items()}
    if any(v is not None for v in calls.values()):
        return {k: resp.responder_label(v) for k, v in calls.items()}, f"percist:{REFERENCE}"
    truth = {k: c.truth_percist(k) for k in c.followups()}
    if any(v is not None for v in truth.values()):
        add_note(notes, "response", f"no PERCIST calls on the {REFERENCE!r} source: labels from truth.percist attrs")
        return {k: resp.responder_label(v) for k, v in truth.items()}, "truth"
    return {}, None


def _delta_frame(c: Cohort, source: str, biomarkers: list[str], notes: dict) -> pd.DataFrame:
    bl_src, fu_src = COMPOSITES.get(source, (source, source))
    rows, found = {}, []
    for key in c.followups():
        bl_key = c.baseline_of(key)
        bl = c.source_values(bl_key, bl_src) if bl_key else None
        fu = c.source_values(key, fu_src)
        if bl is None and fu is None:
            continue
        d = resp.study_deltas(bl or {}, fu or {}, biomarkers)
        found.append(d)
        rows[key] = {b: v.value for b, v in d.items()}
    counts = resp.count_reasons(found)
    if counts:
        add_note(notes, "response", f"{source}: missing deltas {json.dumps(counts, sort_keys=True)}")
    return pd.DataFrame.from_dict(rows, orient="index", columns=biomarkers, dtype=float)


def _deltas_rows(c: Cohort, src: str, label_source: str, deltas: pd.DataFrame, y: pd.Series) -> pd.DataFrame:
    """The ``deltas`` table rows of one source: the exact inputs of its Table 2 and DeLong rows."""
    out = deltas.add_prefix("delta_")
    out.insert(0, "responder", y.reindex(deltas.index).to_numpy(dtype=object))
    out.insert(0, "label_source", label_source)
    out.insert(0, "source", src)
    out.insert(0, "baseline", [c.baseline_of(k) for k in deltas.index])
    out.insert(0, "study", deltas.index.to_numpy(dtype=object))
    return out.reset_index(drop=True)


def response_frames(c: Cohort, studies: pd.DataFrame, notes: dict
                    ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Table 2, the pairwise DeLong tests and the deltas they use, per source (follow-up vs its baseline).

    The third frame (table ``deltas``) has one row per source x follow-up: ``study``, ``baseline``,
    ``source``, ``label_source``, ``responder`` (True/False/None) and ``delta_<biomarker>`` (percent).
    """
    labels, label_source = _labels(c, notes)
    head = ["source", "label_source"]
    if studies.empty or label_source is None:
        add_note(notes, "response", "no responder labels (no PERCIST calls, no truth.percist) or no biomarkers")
        return (pd.DataFrame(columns=head + resp.TABLE2_COLUMNS),
                pd.DataFrame(columns=head + ["biomarker_a", "biomarker_b", "n", "auc_a", "auc_b", "z", "p", "reason"]),
                pd.DataFrame(columns=["study", "baseline", *head, "responder"]))
    biomarkers = [b for b in resp.BIOMARKERS if b in studies.columns]
    sources = sorted(set(studies["source"]))
    sources += [k for k, parts in COMPOSITES.items() if set(parts) <= set(sources)]
    tables, delongs, used = [], [], []
    for src in sources:
        deltas = _delta_frame(c, src, biomarkers, notes)
        y = pd.Series({k: labels.get(k) for k in deltas.index}, dtype=object)
        used.append(_deltas_rows(c, src, label_source, deltas, y))
        for frame, out in ((resp.response_table(deltas, y, biomarkers=biomarkers), tables),
                           (resp.pairwise_delong(deltas, y, biomarkers=biomarkers), delongs)):
            frame.insert(0, "label_source", label_source)
            frame.insert(0, "source", src)
            out.append(frame)
    add_note(notes, "response", "one row per follow-up study vs its patient's baseline; several follow-ups of "
                             "one patient are treated as independent")
    return (pd.concat(tables, ignore_index=True), pd.concat(delongs, ignore_index=True),
            pd.concat(used, ignore_index=True))
