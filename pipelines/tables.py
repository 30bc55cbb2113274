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
"""
from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from petcohort.engine.errors import StatsError
from petcohort.engine.stats import accessor as _accessor  # noqa: F401 - registers ds.cohort
from petcohort.engine.stats import response as resp
from petcohort.engine.stats.agreement import ks_normality, lins_ccc, spearman
from petcohort.engine.stats.agreement_kappa import cohen_kappa
from petcohort.engine.stats.percist import CATEGORIES as PERCIST_CATEGORIES
from petcohort.engine.stats.tracking import pool_accuracy
from petcohort.engine.stats.ranks import wilcoxon_signed_rank
from petcohort.pipelines.tables_gather import Cohort, flatten, gather

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
REFERENCE = "manual"
#: Response sources made of two masks (paper: U-Net_BL on baselines, U-Net_FU on follow-ups).
COMPOSITES = {"nnunet_bl+fu": ("nnunet_bl", "nnunet_fu")}
_META = ["study", "patient", "timepoint", "days", "site", "scanner"]
_ACQ = {"baseline": lambda tp: tp == 0, "follow-up": lambda tp: tp > 0, "all": lambda tp: True}


@dataclass
class CohortTables:
    """The cohort tables, the results Dataset and notes (``{table: [text]}``)."""

    frames: dict[str, pd.DataFrame]
    dataset: xr.Dataset
    notes: dict[str, list[str]] = field(default_factory=dict)


def _note(notes: dict[str, list[str]], table: str, text: str) -> None:
    notes.setdefault(table, []).append(text)
    log.info("%s: %s", table, text)


# -- studies and lesions -----------------------------------------------------------------------
def studies_frame(c: Cohort) -> pd.DataFrame:
    """One row per study x source with every quantify study biomarker (and ``*_reason``)."""
    rows = [{**c.meta(key), "source": src, **flatten(vals)}
            for key, summary in sorted(c.summaries("quantify").items())
            for src, vals in sorted((summary.get("sources") or {}).items())]
    return pd.DataFrame(rows, columns=None if rows else _META + ["source"])


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
    return pd.DataFrame(rows, columns=None if rows else _META + ["source", "lesion"])


# -- segmentation (Table 1) --------------------------------------------------------------------
def _ratio(num: float, den: float) -> float | None:
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
        _note(notes, "segmentation", "no committed evaluate records: no segmentation metrics")
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
                     "global_dice": _ratio(2 * tot["intersect"], tot["truth_voxels"] + tot["pred_voxels"]),
                     "recall": _ratio(tot["tp"], tot["tp"] + tot["fn"]),
                     "precision": _ratio(tot["tp_pred"], tot["tp_pred"] + tot["fp"]),
                     "fp_volume_ml": float(pd.to_numeric(g["fp_volume_ml"], errors="coerce").mean()),
                     "fn_volume_ml": float(pd.to_numeric(g["fn_volume_ml"], errors="coerce").mean())})
    _note(notes, "segmentation", "recall/precision pool lesion counts over studies; fp/fn volumes are "
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
        _note(notes, "segmentation_paired", "fewer than two automatic sources on follow-ups")
    return pd.DataFrame(rows, columns=cols), pd.DataFrame(paired, columns=paired_cols)


# -- agreement ---------------------------------------------------------------------------------
def _biomarkers(studies: pd.DataFrame) -> list[str]:
    skip = set(_META) | {"source", "kernel_voxels", "kernel_ml"}
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
        _note(notes, "agreement", f"no {REFERENCE!r} source: no agreement statistics")
        return pd.DataFrame(columns=cols)
    tp = studies.groupby("study")["timepoint"].first()
    wide = {b: _wide(studies, b, tp) for b in _biomarkers(studies)}
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
    _note(notes, "agreement", "pairs with a missing value on either side are dropped (n_missing); KS tests the "
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
        _note(notes, "response", f"no PERCIST calls on the {REFERENCE!r} source: labels from truth.percist attrs")
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
        _note(notes, "response", f"{source}: missing deltas {json.dumps(counts, sort_keys=True)}")
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
        _note(notes, "response", "no responder labels (no PERCIST calls, no truth.percist) or no biomarkers")
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
    _note(notes, "response", "one row per follow-up study vs its patient's baseline; several follow-ups of "
                             "one patient are treated as independent")
    return (pd.concat(tables, ignore_index=True), pd.concat(delongs, ignore_index=True),
            pd.concat(used, ignore_index=True))


# -- PERCIST -----------------------------------------------------------------------------------
def percist_frames(c: Cohort, notes: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per follow-up PERCIST call (evidence flattened), and the confusion vs ``truth.percist``."""
    rows = []
    for key, summary in sorted(c.summaries("percist").items()):
        for src, call in sorted((summary.get("sources") or {}).items()):
            call = call or {}
            rows.append({**c.meta(key), "source": src, "category": call.get("category"),
                         "reason": call.get("reason"), "rule": call.get("rule"),
                         "qc_flags": ";".join(map(str, call.get("qc_flags") or [])) or None,
                         "truth_percist": c.truth_percist(key),
                         **flatten(call.get("evidence") or {}, prefix="evidence.")})
    calls = pd.DataFrame(rows, columns=None if rows else _META + ["source", "category", "reason", "rule",
                                                                  "qc_flags", "truth_percist"])
    conf_cols = ["source", "truth", "call", "count"]
    if calls.empty or calls["truth_percist"].isna().all():
        _note(notes, "percist_confusion", "no PERCIST calls with a truth.percist attr to compare")
        return calls, pd.DataFrame(columns=conf_cols)
    known = calls[calls["truth_percist"].notna()]
    conf = (known.assign(call=known["category"].fillna("none")).groupby(["source", "truth_percist", "call"])
            .size().reset_index(name="count").rename(columns={"truth_percist": "truth"}))
    for src, g in known.groupby("source"):
        _note(notes, "percist_confusion", f"{src}: {int((g['category'] == g['truth_percist']).sum())} of "
                                          f"{len(g)} calls equal truth.percist")
    return calls, conf[conf_cols]


# -- PERCIST accuracy against the designed response ------------------------------------------
PERCIST_ACCURACY_COLUMNS = ["source", "reference", "baseline_sources", "n", "n_called", "n_no_call", "no_call_reasons",
                            "correct", "accuracy", "accuracy_called", "kappa", "kappa_se", "kappa_ci_low",
                            "kappa_ci_high", "kappa_n", "confusion", "reason"]
_NO_CALL = "none"


def _designed(c: Cohort, key: str) -> str | None:
    truth = c.attrs.get(key, {}).get("truth")
    return truth.get("designed_response") if isinstance(truth, dict) else None


def _percist_pairs(c: Cohort) -> dict[str, list[tuple[str, str | None, str | None, str | None]]]:
    """Per source: (designed, call, no-call reason, baseline source) of every follow-up with a designed response.

    A follow-up without a committed ``percist`` record, or whose record lacks
    the source, is a missing call (``NO_PERCIST_RECORD`` / ``SOURCE_NOT_CALLED``).
    """
    calls = c.summaries("percist")
    designed = {k: _designed(c, k) for k in c.followups()}
    designed = {k: v for k, v in designed.items() if v is not None}
    sources = sorted({s for k in designed for s in ((calls.get(k) or {}).get("sources") or {})})
    out: dict[str, list] = {s: [] for s in sources}
    for key, truth in sorted(designed.items()):
        rec = calls.get(key)
        for src in sources:
            call = ((rec or {}).get("sources") or {}).get(src)
            if rec is None:
                out[src].append((truth, None, "NO_PERCIST_RECORD", None))
            elif call is None:
                out[src].append((truth, None, "SOURCE_NOT_CALLED", None))
            else:
                out[src].append((truth, call.get("category"), call.get("reason") or "NO_CATEGORY",
                                 call.get("baseline_source")))
    return out


def _confusion_cells(items: list[tuple]) -> dict[tuple[str, str], int]:
    """(designed, call) -> count over the 4 x 4 PERCIST grid, plus (designed, "none") cells for missing calls."""
    grid = {(d, x): 0 for d in PERCIST_CATEGORIES for x in PERCIST_CATEGORIES}
    for d, x, _, _ in items:
        cell = (d, x or _NO_CALL)
        grid[cell] = grid.get(cell, 0) + 1
    return grid


def percist_accuracy_frames(c: Cohort, notes: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per source: accuracy, Cohen's kappa (CI) and confusion of the calls vs each follow-up's designed response.

    ``accuracy`` counts a missing call as a disagreement (``n`` = follow-ups
    with a designed response); ``accuracy_called`` and kappa use the called
    follow-ups only (``kappa_n``). Kappa: unweighted over CMR/PMR/SMD/PMD,
    Fleiss-Cohen-Everitt (1969) asymptotic SE, 95 % Wald interval
    (:func:`petcohort.engine.stats.agreement_kappa.cohen_kappa`). The long
    confusion table (``percist_accuracy_confusion``) has every designed x
    call cell of the 4 x 4 grid, plus ``call`` "none" cells for missing calls;
    ``confusion`` holds the same as JSON ``{designed: {call: count}}``.
    """
    conf_cols = ["source", "designed", "call", "count"]
    pairs = _percist_pairs(c)
    if not pairs:
        _note(notes, "percist_accuracy", "no PERCIST calls on follow-ups with a truth.designed_response attr")
        return pd.DataFrame(columns=PERCIST_ACCURACY_COLUMNS), pd.DataFrame(columns=conf_cols)
    rows, cells = [], []
    for src, items in pairs.items():
        called = [(d, k) for d, k, _, _ in items if k is not None]
        reasons: dict[str, int] = {}
        for _, k, why, _ in items:
            if k is None:
                reasons[why] = reasons.get(why, 0) + 1
        correct = sum(1 for d, k in called if d == k)
        row: dict[str, Any] = dict.fromkeys(PERCIST_ACCURACY_COLUMNS)
        row.update(source=src, reference="designed_response", n=len(items), n_called=len(called),
                   n_no_call=len(items) - len(called), correct=correct, accuracy=_ratio(correct, len(items)),
                   accuracy_called=_ratio(correct, len(called)), kappa_n=len(called),
                   baseline_sources=";".join(sorted({b for *_, b in items if b})) or None,
                   no_call_reasons=json.dumps(reasons, sort_keys=True) if reasons else None)
        try:
            k = cohen_kappa([d for d, _ in called], [x for _, x in called], PERCIST_CATEGORIES)
            row.update(kappa=k.kappa, kappa_se=k.se, kappa_ci_low=k.ci_low, kappa_ci_high=k.ci_high)
            if k.constant_side:  # e.g. every call PMD: kappa 0 by construction, no SE / interval
                row["reason"] = "STATS_CONSTANT"
        except StatsError as exc:
            row["reason"] = exc.reason
        grid = _confusion_cells(items)
        nested: dict[str, dict[str, int]] = {}
        for (d, x), n in grid.items():
            nested.setdefault(d, {})[x] = n
        row["confusion"] = json.dumps(nested)
        cells += [{"source": src, "designed": d, "call": x, "count": n} for (d, x), n in grid.items()]
        rows.append(row)
        _note(notes, "percist_accuracy", f"{src}: {correct} of {len(items)} follow-ups called as designed "
                                         f"({len(items) - len(called)} without a call)")
    _note(notes, "percist_accuracy", "reference: the phantom's designed response (truth.designed_response), not "
                                     "truth.percist; kappa: unweighted, 4 categories, Fleiss-Cohen-Everitt 1969 SE, "
                                     "95% Wald CI, over called follow-ups; accuracy counts a missing call as wrong")
    return pd.DataFrame(rows, columns=PERCIST_ACCURACY_COLUMNS), pd.DataFrame(cells, columns=conf_cols)


# -- tracking accuracy against the phantom's lesion ids ---------------------------------------
TRACKING_ACCURACY_COLUMNS = ["source", "baseline_sources", "methods", "n_followups", "n_pairs", "n_predicted",
                             "n_correct", "n_recovered", "precision", "recall", "f1", "n_true_new", "n_called_new",
                             "new_precision", "new_recall", "n_true_vanished", "n_called_vanished",
                             "vanished_precision", "vanished_recall", "n_no_followup_lesions",
                             "n_no_baseline_lesions", "n_baseline_missing", "n_no_truth", "n_not_tracked", "reason"]
_POOLED = ("n_predicted", "n_correct", "n_recovered", "precision", "recall", "f1", "n_true_new", "n_called_new",
           "new_precision", "new_recall", "n_true_vanished", "n_called_vanished", "vanished_precision",
           "vanished_recall")


def _tracking_by_source(c: Cohort) -> dict[str, dict[str, Any]]:
    """Per source: the follow-ups' accuracy dicts, baseline sources, methods and skipped / no-truth counts."""
    by_src: dict[str, dict[str, Any]] = {}

    def entry(src: str) -> dict[str, Any]:
        return by_src.setdefault(src, {"acc": [], "bsrc": set(), "methods": set(), "missing": 0, "no_truth": 0})

    tracks = c.summaries("track")
    for key in c.followups():
        summary = tracks.get(key)
        if summary is None:
            continue
        for src in summary.get("skipped") or {}:
            entry(src)["missing"] += 1
        for src, rec in (summary.get("sources") or {}).items():
            e = entry(src)
            e["bsrc"].add(rec.get("baseline_source") or src)
            if rec.get("method"):
                e["methods"].add(rec["method"])
            if isinstance(rec.get("accuracy"), dict):
                e["acc"].append(rec["accuracy"])
            else:
                e["no_truth"] += 1
    return by_src


def tracking_accuracy_frame(c: Cohort, notes: dict) -> pd.DataFrame:
    """Per source: lesion-match precision/recall/F1 and new/vanished detection against the phantom's lesion ids.

    Counts are summed over follow-ups and the ratios recomputed (micro
    average, :func:`petcohort.engine.stats.tracking.pool_accuracy`);
    ``n_pairs`` = true persisting lesion ids. Follow-ups are counted, never
    dropped silently: ``n_no_followup_lesions`` / ``n_no_baseline_lesions``
    (tracked, with accuracy), ``n_baseline_missing`` (source not on the
    baseline, e.g. its segmentation failed), ``n_no_truth`` (no
    ``truth/lesion_ids``), ``n_not_tracked`` (no committed ``track`` record,
    e.g. a failed baseline; the same for every source).
    """
    tracks = c.summaries("track")
    not_tracked = sum(1 for k in c.followups() if k not in tracks)
    by_src = _tracking_by_source(c)
    if not by_src:
        _note(notes, "tracking_accuracy", "no committed track records on follow-ups: no tracking accuracy")
        return pd.DataFrame(columns=TRACKING_ACCURACY_COLUMNS)
    rows = []
    for src, e in sorted(by_src.items()):
        pooled = pool_accuracy(e["acc"])
        status = [a.get("status") for a in e["acc"]]
        row: dict[str, Any] = dict.fromkeys(TRACKING_ACCURACY_COLUMNS)
        row.update({k: pooled[k] for k in _POOLED})
        row.update(source=src, baseline_sources=";".join(sorted(e["bsrc"])) or None,
                   methods=";".join(sorted(e["methods"])) or None, n_followups=len(e["acc"]),
                   n_pairs=pooled["n_true_persisting"], n_no_followup_lesions=status.count("no_followup_lesions"),
                   n_no_baseline_lesions=status.count("no_baseline_lesions"), n_baseline_missing=e["missing"],
                   n_no_truth=e["no_truth"], n_not_tracked=not_tracked,
                   reason=None if e["acc"] else "NO_TRUTH_IDS")
        rows.append(row)
    _note(notes, "tracking_accuracy", "counts pooled over follow-ups (micro average); a match is correct when both "
                                      "lesions' largest-overlap truth ids agree; recall per true persisting id; truth "
                                      "ids counted as present in the source's own masks (docs/methods.md)")
    if not_tracked:
        _note(notes, "tracking_accuracy", f"{not_tracked} follow-up(s) without a committed track record")
    return pd.DataFrame(rows, columns=TRACKING_ACCURACY_COLUMNS)


# -- results.zarr ------------------------------------------------------------------------------
def results_dataset(c: Cohort, studies: pd.DataFrame) -> xr.Dataset:
    """Dataset with dim ``study`` (coords patient, timepoint, site, scanner, days) and ``source``.

    Variables: every numeric study biomarker (study, source), float64 with NaN
    where missing (the reason is in the ``studies`` table); ``dice``,
    ``recall``, ``precision`` from evaluate; ``percist_category`` (study,
    source; "" = none) and ``truth_percist`` (study; "" = none).
    """
    keys = c.keys
    meta = pd.DataFrame([c.meta(k) for k in keys], columns=_META)
    evals = c.summaries("evaluate")
    calls = c.summaries("percist")
    sources = sorted(set(studies.get("source", pd.Series(dtype=object)))
                     | {s for v in evals.values() for s in (v.get("sources") or {})}
                     | {s for v in calls.values() for s in (v.get("sources") or {})})
    shape = (len(keys), len(sources))
    pos = {k: i for i, k in enumerate(keys)}
    spos = {s: j for j, s in enumerate(sources)}
    data: dict[str, Any] = {}
    for b in _biomarkers(studies) if not studies.empty else []:
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
    c = gather(store)
    notes: dict[str, list[str]] = {}
    for stage, n in sorted(c.failed.items()):
        _note(notes, "stages", f"{n} failed {stage} record(s) left out")
    studies = studies_frame(c)
    if studies.empty:
        _note(notes, "studies", "no committed quantify records")
    seg, seg_paired = segmentation_frames(c, notes)
    response, delong, deltas = response_frames(c, studies, notes)
    percist, confusion = percist_frames(c, notes)
    frames = {"studies": studies, "lesions": lesions_frame(c), "segmentation": seg,
              "segmentation_paired": seg_paired, "agreement": agreement_frame(studies, notes),
              "response": response, "delong": delong, "deltas": deltas, "percist": percist,
              "percist_confusion": confusion}
    frames["percist_accuracy"], frames["percist_accuracy_confusion"] = percist_accuracy_frames(c, notes)
    frames["tracking_accuracy"] = tracking_accuracy_frame(c, notes)
    records = store.stage_records()
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
