"""Cohort tables of PERCIST calls and of accuracy against the synthetic truth.

``percist`` (one row per follow-up call, evidence flattened) and
``percist_confusion`` (calls vs ``truth.percist``, the same rules on clean
images: a consistency check); ``percist_accuracy`` and
``percist_accuracy_confusion`` (calls vs each follow-up's designed response,
``truth.designed_response``); ``tracking_accuracy`` (lesion matches vs the
phantom's stable lesion ids). Definitions: docs/methods.md "PERCIST 1.0" and
"Lesion tracking accuracy". Assembled and written by :mod:`petcohort.pipelines.tables`.
"""
from __future__ import annotations

import json
from typing import Any

import pandas as pd

from petcohort.engine.errors import StatsError
from petcohort.engine.stats.agreement_kappa import cohen_kappa
from petcohort.engine.stats.percist import CATEGORIES as PERCIST_CATEGORIES
from petcohort.engine.stats.tracking_accuracy import pool_accuracy
from petcohort.pipelines.tables_gather import Cohort, flatten
from petcohort.pipelines.tables_stats import META_COLUMNS, add_note, safe_ratio

__all__ = ["PERCIST_ACCURACY_COLUMNS", "TRACKING_ACCURACY_COLUMNS", "percist_frames", "percist_accuracy_frames",
           "tracking_accuracy_frame"]

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
    calls = pd.DataFrame(rows, columns=None if rows else META_COLUMNS + ["source", "category", "reason", "rule",
                                                                  "qc_flags", "truth_percist"])
    conf_cols = ["source", "truth", "call", "count"]
    if calls.empty or calls["truth_percist"].isna().all():
        add_note(notes, "percist_confusion", "no PERCIST calls with a truth.percist attr to compare")
        return calls, pd.DataFrame(columns=conf_cols)
    known = calls[calls["truth_percist"].notna()]
    conf = (known.assign(call=known["category"].fillna("none")).groupby(["source", "truth_percist", "call"])
            .size().reset_index(name="count").rename(columns={"truth_percist": "truth"}))
    for src, g in known.groupby("source"):
        add_note(notes, "percist_confusion", f"{src}: {int((g['category'] == g['truth_percist']).sum())} of "
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
        add_note(notes, "percist_accuracy", "no PERCIST calls on follow-ups with a truth.designed_response attr")
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
                   n_no_call=len(items) - len(called), correct=correct, accuracy=safe_ratio(correct, len(items)),
                   accuracy_called=safe_ratio(correct, len(called)), kappa_n=len(called),
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
        add_note(notes, "percist_accuracy", f"{src}: {correct} of {len(items)} follow-ups called as designed "
                                         f"({len(items) - len(called)} without a call)")
    add_note(notes, "percist_accuracy", "reference: the phantom's designed response (truth.designed_response), not "
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
    average, :func:`petcohort.engine.stats.tracking_accuracy.pool_accuracy`);
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
        add_note(notes, "tracking_accuracy", "no committed track records on follow-ups: no tracking accuracy")
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
    add_note(notes, "tracking_accuracy", "counts pooled over follow-ups (micro average); a match is correct when both "
                                      "lesions' largest-overlap truth ids agree; recall per true persisting id; truth "
                                      "ids counted as present in the source's own masks (docs/methods.md)")
    if not_tracked:
        add_note(notes, "tracking_accuracy", f"{not_tracked} follow-up(s) without a committed track record")
    return pd.DataFrame(rows, columns=TRACKING_ACCURACY_COLUMNS)
