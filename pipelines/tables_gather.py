"""Gathering a cohort's small per-study JSON (study attrs and committed stage
summaries) from the store, for the cohort tables. Never reads a volume."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from petcohort.storage.keys import split_study_key

__all__ = ["Cohort", "gather", "flatten"]

def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to ``a.b`` keys; a 3-vector ``*_mm`` list to ``_z/_y/_x``; other lists to JSON text."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{name}."))
        elif isinstance(v, (list, tuple)) and len(v) == 3 and name.endswith("_mm") \
                and all(isinstance(x, (int, float)) for x in v):
            base = name[: -len("_mm")]
            out.update({f"{base}_{ax}_mm": float(x) for ax, x in zip("zyx", v)})
        elif isinstance(v, (list, tuple)):
            out[name] = json.dumps(v)
        else:
            out[name] = v
    return out


@dataclass
class Cohort:
    """Study attrs and committed stage summaries of a store (all small JSON)."""

    keys: list[str]
    attrs: dict[str, dict]
    summaries_by_stage: dict[str, dict[str, dict]]
    failed: dict[str, int]

    _cache: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    _baselines: dict[str, str] | None = field(default=None, repr=False)

    def meta(self, key: str) -> dict[str, Any]:
        """Study, patient, timepoint, days, site, scanner of ``key`` (patient/timepoint from the key if absent)."""
        if key not in self._cache:
            self._cache[key] = self._meta(key)
        return dict(self._cache[key])

    def _meta(self, key: str) -> dict[str, Any]:
        a = self.attrs.get(key, {})
        patient, tp = split_study_key(key)
        return {"study": key, "patient": a.get("patient", patient),
                "timepoint": int(a.get("timepoint", tp if tp is not None else 0)),
                "days": a.get("days_since_baseline"), "site": a.get("site"), "scanner": a.get("scanner")}

    def summaries(self, stage: str) -> dict[str, dict]:
        return self.summaries_by_stage.get(stage, {})

    def followups(self) -> list[str]:
        return [k for k in self.keys if self.meta(k)["timepoint"] > 0]

    def baseline_of(self, key: str) -> str | None:
        """The T0 study of ``key``'s patient, or None."""
        if self._baselines is None:  # one pass over the cohort, not one per follow-up
            self._baselines = {self.meta(k)["patient"]: k for k in self.keys if self.meta(k)["timepoint"] == 0}
        return self._baselines.get(self.meta(key)["patient"])

    def source_values(self, key: str, source: str) -> dict | None:
        return (self.summaries("quantify").get(key, {}).get("sources") or {}).get(source)

    def truth_percist(self, key: str) -> str | None:
        truth = self.attrs.get(key, {}).get("truth")
        return truth.get("percist") if isinstance(truth, dict) else None

    def track_status(self) -> dict[tuple[str, str, Any], dict[str, Any]]:
        """(study, source, lesion id) -> tracking columns.

        A baseline lesion is keyed by the track record's ``baseline_source``
        and takes its earliest follow-up; a lesion in several matches (split,
        merged) lists its partners joined by ";".
        """
        out: dict[tuple[str, str, Any], dict[str, Any]] = {}
        order = sorted(self.summaries("track").items(), key=lambda kv: -self.meta(kv[0])["timepoint"])
        for key, summary in order:
            bl_key = self.baseline_of(key)
            seen: set[tuple[str, str, Any]] = set()
            for src, tr in (summary.get("sources") or {}).items():
                bl_src = (tr or {}).get("baseline_source") or src
                for m in (tr or {}).get("matches") or []:
                    ends = [((key, src, m.get("followup_lesion")), m.get("baseline_lesion"), bl_key),
                            ((bl_key, bl_src, m.get("baseline_lesion")), m.get("followup_lesion"), key)]
                    for where, partner, partner_study in ends:
                        if where[0] is None or where[2] is None:
                            continue
                        row = {"track_status": m.get("status"), "track_distance_mm": m.get("distance_mm"),
                               "track_partner": None if partner is None else str(partner),
                               "track_partner_study": partner_study}
                        if where in seen and out[where]["track_partner"] and row["track_partner"]:
                            row["track_partner"] = f"{out[where]['track_partner']};{row['track_partner']}"
                        out[where] = row
                        seen.add(where)
        return out


def gather(store, records: dict[tuple[str, str], dict] | None = None) -> Cohort:
    """Read study attrs and committed stage summaries (records with another status are counted only).

    ``records``: ``store.stage_records()`` when the caller has read them already (read here when None).
    """
    keys = list(store.study_keys())
    attrs = {k: dict(store.study_attrs(k)) for k in keys}
    by_stage: dict[str, dict[str, dict]] = {}
    failed: dict[str, int] = {}
    for (key, stage), rec in (store.stage_records() if records is None else records).items():
        if key not in attrs:
            continue
        if rec.get("status") == "committed":
            by_stage.setdefault(stage, {})[key] = rec.get("summary") or {}
        else:
            failed[stage] = failed.get(stage, 0) + 1
    return Cohort(keys, attrs, by_stage, failed)
