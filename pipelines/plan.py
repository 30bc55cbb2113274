"""Planning a run: which study-stages are redone, and why (``plan_run``, ``petcohort manifest --why``).

For each (study, stage) that applies, the plan resolves the config values it
reads (``params``), its code fingerprint (``code``: its petcohort modules,
library versions, model files; :mod:`petcohort.pipelines.fingerprint`) and
its inputs (study attrs and input array names, plus the fingerprints of the
records it depends on). A committed record with equal params, code and
inputs is skipped unless ``force`` or a stage it depends on is redone in the
same run. :mod:`petcohort.pipelines.run` executes the plan.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from petcohort.engine.graph import StudyGraph, baseline_keys, build_graph, topological_stages
from petcohort.pipelines.config import RunConfig, config_hash
from petcohort.pipelines.fingerprint import CodeIndex, code_changes, stage_code
from petcohort.pipelines.run_task import StageJob, input_hash, input_parts, record_hash, study_digest
from petcohort.pipelines.stages import MODEL_STAGES, STAGES, Stage, default_stages, stage_order

__all__ = ["RunPlan", "plan_run", "refresh_records", "stale_study_stages"]


@dataclass(frozen=True)
class RunPlan:
    """What a run will do: the task graph, one job per task, the skipped study-stages, and why each job runs.

    ``why`` maps (study, stage) of every job to short reasons, e.g.
    ``"params quantify.radius_mm: 6.2035 -> 6.0"``,
    ``"code: module petcohort.engine.kernels.sulpeak changed"``,
    ``"input study/threshold is redone in this run"``, ``"never run"``.
    """

    graph: StudyGraph
    jobs: dict[str, StageJob]
    skipped: tuple[tuple[str, str], ...]
    why: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)


def _code_version() -> str:
    from petcohort.engine import __version__  # noqa: PLC0415

    return str(__version__)


def _json_plain(obj: Any) -> Any:
    """``obj`` as it reads back from a JSON record (tuples -> lists), so that comparisons are exact."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _params_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    missing = "(absent)"
    return [f"params {k}: {old.get(k, missing)!r} -> {new.get(k, missing)!r}"
            for k in sorted(set(old) | set(new)) if old.get(k, missing) != new.get(k, missing)]


def _input_changes(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    if not old:
        return ["inputs changed (the record does not name them)"]
    out = []
    for name in sorted(set(old) | set(new)):
        if old.get(name) != new.get(name):
            what = "study attrs or input arrays" if name == "study" else name
            out.append(f"input {what} changed" if name in old and name in new else
                       f"input {what} {'added' if name in new else 'removed'}")
    return out or ["inputs changed"]


def _why(rec: dict[str, Any] | None, job: StageJob, records: dict, redone: set[tuple[str, str]]) -> list[str]:
    """Why the study-stage of ``job`` must run, given its record ([] = up to date)."""
    if rec is None:
        return ["never run"]
    if rec.get("status") != "committed":
        return [f"last attempt failed ({rec.get('reason')})"]
    if "params" not in rec or "code" not in rec:
        return [f"record written by petcohort {rec.get('code_version')} holds no params/code fingerprint: "
                "redone once to record them"]
    out = _params_changes(rec.get("params") or {}, job.params)
    if (rec.get("code") or {}).get("digest") != job.code.get("digest"):
        out += [f"code: {c}" for c in code_changes(rec.get("code"), job.code)]
    ups = [("study", job.study, r) for r in job.requires] + [("baseline", job.baseline, r)
                                                             for r in job.baseline_requires]
    redone_ups = [f"input {role}/{r} is redone in this run" for role, k, r in ups if (k, r) in redone]
    if redone_ups:
        return out + redone_ups
    parts = input_parts(job.inputs, {f"{role}/{r}": records.get((k, r)) for role, k, r in ups})
    if input_hash(parts) != rec.get("input_hash"):
        out += _input_changes(rec.get("inputs"), parts)
    return out


def plan_run(store: Any, registry: dict[str, Stage], names: list[str], *, config: RunConfig, force: bool,
             token: str, code: CodeIndex | None = None,
             records: dict[tuple[str, str], dict[str, Any]] | None = None) -> RunPlan:
    """Decide which study-stages to run (see the module docstring).

    ``code``: the source index the code fingerprints come from (default: the
    installed petcohort sources; tests pass an edited copy). ``records``: the
    store's stage records as :meth:`~petcohort.storage.store.CohortStore.stage_records`
    returns them, when the caller holds them current (a run's later phase);
    read from the store when None. Parsing every record is most of a plan's
    cost per study (the summaries are in the records).
    """
    # A study whose ingest failed is a placeholder holding only its failure
    # record (pipelines/ingest.py): nothing to analyse; its follow-ups then
    # fail with NO_BASELINE.
    studies = {k: a for k in store.study_keys() if not (a := store.study_attrs(k)).get("ingest_failed")}
    records = store.stage_records() if records is None else records
    stage_arrays: dict[str, set[str]] = {}
    for (study, _stage), rec in records.items():
        stage_arrays.setdefault(study, set()).update(rec.get("arrays") or ())
    digests = {k: study_digest(a, store.array_names(k), stage_arrays.get(k, set())) for k, a in studies.items()}
    base = baseline_keys(studies)
    version = _code_version()
    index = code if code is not None else CodeIndex.from_package()
    order = topological_stages(registry, names)
    known = stage_order()
    last_model = max((known.index(m) for m in MODEL_STAGES if m in known), default=len(known))
    consumers = set(known[last_model + 1:])
    why: dict[tuple[str, str], tuple[str, ...]] = {}
    redone: set[tuple[str, str]] = set()
    skipped: list[tuple[str, str]] = []
    jobs: dict[tuple[str, str], StageJob] = {}

    def applies(stage: str, attrs: dict[str, Any]) -> bool:
        return stage not in registry or registry[stage].applies(attrs)

    for name in order:
        st = registry[name]
        params = _json_plain(config.params_for(st.params))
        chash = config_hash(config, st.params)
        fp = _json_plain(stage_code(st, config, index))
        for study, attrs in sorted(studies.items()):
            if not st.applies(attrs):
                continue
            b = base[study]
            inputs: dict[str, str | None] = {"study": digests[study]}
            if name in consumers:
                # Stages after the model stages read their seg/* masks without
                # requiring them (they run without models too): the model
                # records of the study and its baseline are inputs too.
                inputs.update({f"{role}/{m}": record_hash(records.get((k, m)))
                               for role, k in (("study", study), ("baseline", b)) if k is not None
                               for m in MODEL_STAGES if (k, m) in records})
            job = StageJob(store_url=store.url, study=study, stage=st, baseline=b,
                           requires=tuple(r for r in st.requires if applies(r, attrs)),
                           baseline_requires=tuple(r for r in st.needs_baseline
                                                   if b is not None and applies(r, studies[b])),
                           config=config, config_hash=chash, inputs=inputs, code_version=version,
                           token=token, params=params, code=fp)
            reasons = ["forced (--force)"] if force else _why(records.get((study, name)), job, records, redone)
            if not reasons:
                skipped.append((study, name))
                continue
            why[(study, name)] = tuple(reasons)
            redone.add((study, name))
            jobs[(study, name)] = job
    graph = build_graph(registry, studies, selected=order, token=token, skip=skipped)
    by_key = {t.key: jobs[(t.study, t.stage)] for t in graph.tasks.values()}
    return RunPlan(graph, by_key, tuple(skipped), why)


def refresh_records(store: Any, records: dict[tuple[str, str], dict[str, Any]], plan: RunPlan) -> None:
    """Bring ``records`` (as :meth:`~petcohort.storage.store.CohortStore.stage_records` gave them) up to date
    after ``plan`` ran, in place: only its study-stages have new records (committed or failed), so only those
    are read again. A run's later phase plans from them instead of parsing every record of the store."""
    for study, stage in plan.why:
        rec = store.stage_record(study, stage)
        if rec is None:
            records.pop((study, stage), None)
        else:
            records[(study, stage)] = rec


def stale_study_stages(store: Any, *, config: RunConfig, stages: list[str] | None = None,
                       code: CodeIndex | None = None) -> list[dict[str, Any]]:
    """Every study-stage a run with ``config`` would redo, and why (``petcohort manifest --why``).

    Parameters
    ----------
    store : CohortStore
        Read only.
    config : RunConfig
        The configuration the next run would use.
    stages : list of str, optional
        Stage names (default: as ``run_cohort``: every stage, less the model
        stages without a model folder).
    code : CodeIndex, optional
        Source index (default: the installed sources).

    Returns
    -------
    list of dict
        ``{"study", "stage", "why": [str, ...]}`` in stage then study order.
    """
    names = stage_order(list(stages)) if stages is not None else default_stages(config)
    plan = plan_run(store, dict(STAGES), names, config=config, force=False, token="why", code=code)
    order = {n: i for i, n in enumerate(names)}
    return [{"study": study, "stage": stage, "why": list(reasons)}
            for (study, stage), reasons in sorted(plan.why.items(), key=lambda kv: (order.get(kv[0][1], 0), kv[0]))]
