"""``run_cohort``: every selected stage over every study, resumable and fault tolerant.

Steps (docs/contracts.md, "Execution"):

1. open the store ``r+`` and hold its writer lock for the whole run (a second
   run is refused with ``STORE_LOCKED``);
2. plan (:mod:`petcohort.pipelines.plan`): a committed record with equal
   params, code fingerprint and inputs is skipped unless ``force`` or a
   stage it depends on is redone in this run; each redone study-stage gets
   the reasons why (:attr:`RunPlan.why`, ``petcohort manifest --why``);
3. build the task description (``engine.graph.build_graph``) and submit one
   Dask task per study-stage (``pipelines.run_task.execute_study_stage``); each
   task reads from and commits to the store itself, only a small summary
   comes back;
4. record failures the tasks could not record themselves (a worker lost too
   often: ``WORKER_LOST``; their dependants: ``UPSTREAM_FAILED``);
5. with ``out``, build the cohort tables as one more Dask task;
6. show per-stage counts and every failure's reason.
"""
from __future__ import annotations

import datetime as _dt
import importlib.util
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from petcohort.engine.cluster import ClusterSession, connect, load_cluster_config
from petcohort.pipelines.config import RunConfig, to_yaml
from petcohort.pipelines.fingerprint import CodeIndex
from petcohort.pipelines.plan import RunPlan, plan_run, refresh_records, stale_study_stages
from petcohort.pipelines.progress import RunProgress, render_summary
from petcohort.pipelines.run_task import build_outputs_task, execute_study_stage
from petcohort.pipelines.stages import MODEL_STAGES, STAGES, default_stages, stage_order

__all__ = ["RunSummary", "RunPlan", "plan_run", "run_cohort", "stale_study_stages", "write_run_config",
           "DEFAULT_CLUSTER_FILE", "RUN_CONFIG_FILE"]

log = logging.getLogger(__name__)
DEFAULT_CLUSTER_FILE = Path("cluster.yaml")
#: The resolved configuration written next to the results (``--out``); the store keeps it as cohort JSON ``run_config``.
RUN_CONFIG_FILE = "run_config.yaml"


@dataclass
class RunSummary:
    """Outcome of one run.

    Attributes
    ----------
    done, skipped : list of (study, stage)
        Study-stages committed in this run / up to date and not redone.
    failed : list of (study, stage, reason)
        Study-stages that failed in this run, with their reason code.
    seconds : float
        Wall time of the run (s).
    per_stage : dict of str to dict
        ``{stage: {"done": n, "skipped": n, "failed": n}}``.
    token : str
        The run token (in task keys and in each record's ``run``).
    dashboard : str or None
        The Dask dashboard link of a cluster this run started.
    """

    done: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    seconds: float = 0.0
    per_stage: dict[str, dict[str, int]] = field(default_factory=dict)
    token: str = ""
    dashboard: str | None = None


def _open_session(cluster_file: str | os.PathLike | None) -> ClusterSession:
    if cluster_file is None and DEFAULT_CLUSTER_FILE.is_file():
        cluster_file = DEFAULT_CLUSTER_FILE
    return connect(load_cluster_config(cluster_file))


def _dashboard_link(client: Any) -> str | None:
    try:
        return client.dashboard_link
    except Exception:  # noqa: BLE001 - no dashboard on this scheduler
        return None


def _has_gpu_workers(client: Any) -> bool:
    workers = client.scheduler_info().get("workers", {})
    return any((w.get("resources") or {}).get("GPU", 0) > 0 for w in workers.values())


def _submit(client: Any, plan: RunPlan) -> dict[str, Any]:
    gpu_ok = _has_gpu_workers(client)
    if not gpu_ok and any(t.resources for t in plan.graph.tasks.values()):
        log.info("no worker advertises a GPU resource: GPU-capable stages run on CPU workers")
    futures: dict[str, Any] = {}
    for key in plan.graph.order:
        spec = plan.graph.tasks[key]
        deps = [futures[d] for d in spec.deps]
        futures[key] = client.submit(execute_study_stage, plan.jobs[key], *deps, key=key,
                                     resources=(spec.resources or None) if gpu_ok else None)
    return futures


def _collect(client: Any, store: Any, plan: RunPlan, futures: dict[str, Any], progress: RunProgress,
             summary: RunSummary) -> None:
    """Wait for every task; record the failures no task could record (lost workers)."""
    from distributed import as_completed  # noqa: PLC0415

    errored: dict[str, BaseException] = {}
    for fut in as_completed(list(futures.values()), loop=client.loop):
        spec = plan.graph.tasks[fut.key]
        try:
            # waits again if the result was lost with its worker and is being recomputed
            res = fut.result()
        except Exception as exc:  # noqa: BLE001 - KilledWorker, CancelledError, ...
            errored[fut.key] = exc
        else:
            if res["status"] == "committed":
                summary.done.append((spec.study, spec.stage))
            else:
                summary.failed.append((spec.study, spec.stage, str(res["reason"])))
            progress.advance(spec.stage, failed=res["status"] != "committed")
        fut.release()
    # Dask blames every task that was on a worker when it died, so a healthy
    # study-stage queued beside a crashing one can end as KilledWorker too.
    # Retry those (and their dependants) alone, one at a time, in dependency
    # order: only a task that kills its worker on its own is WORKER_LOST.
    retry = {k for k, e in errored.items() if type(e).__name__ == "KilledWorker"}
    for key in [k for k in plan.graph.order if k in errored]:
        spec = plan.graph.tasks[key]
        if any(d in errored for d in spec.deps) or not (key in retry or any(d in retry for d in spec.deps)):
            continue
        retry.add(key)
        try:
            res = client.submit(execute_study_stage, plan.jobs[key], key=f"{key}-alone", pure=False).result()
        except Exception as exc:  # noqa: BLE001 - KilledWorker again: this task is the culprit
            errored[key] = exc
            continue
        del errored[key]
        ok = res["status"] == "committed"
        if ok:
            summary.done.append((spec.study, spec.stage))
        else:
            summary.failed.append((spec.study, spec.stage, str(res["reason"])))
        progress.advance(spec.stage, failed=not ok)
    for key, exc in errored.items():
        spec = plan.graph.tasks[key]
        if any(d in errored for d in spec.deps):
            reason, message = "UPSTREAM_FAILED", "a stage this one depends on did not finish"
        elif type(exc).__name__ == "KilledWorker":
            reason, message = "WORKER_LOST", "the task's workers died too often (out of memory?)"
        else:
            reason, message = "INTERNAL_ERROR", f"{type(exc).__name__}: {exc}"[:500]
        store.fail_stage(spec.study, spec.stage, record={
            "reason": reason, "message": message, **plan.jobs[key].provenance(), "run": summary.token,
            "summary": {}})
        summary.failed.append((spec.study, spec.stage, reason))
        progress.advance(spec.stage, failed=True)


def write_run_config(store: Any, config: RunConfig, out: str | os.PathLike | None) -> None:
    """The resolved configuration next to the results: cohort JSON ``run_config`` and ``out/run_config.yaml``."""
    store.write_json("run_config", config.to_dict())
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / RUN_CONFIG_FILE).write_text(to_yaml(config), encoding="utf-8")


def _build_outputs(client: Any, store: Any, out: str | os.PathLike, token: str) -> None:
    if importlib.util.find_spec("petcohort.pipelines.tables") is None:
        log.info("pipelines/tables.py is not available: cohort tables not written")
        return
    client.submit(build_outputs_task, store.url, str(out), key=f"tables-{token}").result()
    log.info("cohort tables written")


def run_cohort(store_url: str | os.PathLike, *, cluster_file: str | os.PathLike | None = None,
               stages: list[str] | None = None, force: bool = False, out: str | os.PathLike | None = None,
               config: RunConfig | None = None, client: Any = None, code: CodeIndex | None = None) -> RunSummary:
    """Run the selected stages over every study of the store (resumable).

    Parameters
    ----------
    store_url : str or path
        The cohort store (path, ``memory://`` only with a threads-only
        client, or ``s3://...``). Workers open it by this URL.
    cluster_file : path, optional
        ``cluster.yaml``; default ``./cluster.yaml`` when present, else a
        local cluster. Ignored when ``client`` is given.
    stages : list of str, optional
        Stage names to run (default: all registered).
    force : bool
        Redo study-stages that are up to date.
    out : path, optional
        Write ``results.zarr``, ``tables/`` and ``run_config.yaml`` here after the stages.
    config : RunConfig, optional
        Stage parameters (default: every default). Written to the store as
        cohort JSON ``run_config`` (and to ``out/run_config.yaml``).
    client : distributed.Client, optional
        Use this client (not closed at the end).
    code : CodeIndex, optional
        Source index of the code fingerprints (default: the installed sources).

    Returns
    -------
    RunSummary

    Raises
    ------
    StoreError
        ``STORE_LOCKED`` when another run holds the store; ``NOT_A_STORE``.
    ConfigError, ClusterError
        Bad ``stages`` or cluster file; cluster unreachable; an nnU-Net model
        that cannot run (``stage_segment.validate_models``), before any study.
    """
    from petcohort.storage.store import CohortStore  # noqa: PLC0415

    t0 = time.perf_counter()
    config = config if config is not None else RunConfig()
    names = stage_order(list(stages)) if stages is not None else default_stages(config)
    left_out = sorted(set(stage_order()) - set(names)) if stages is None else []
    if left_out:
        log.info("stages left out (no model folder configured: --model-bl/--model-fu): %s", ", ".join(left_out))
    # nnU-Net models (files, architecture, channel and label binding) are checked once
    # here, so that a model that cannot run is refused before any store or worker is touched
    from petcohort.pipelines.stage_segment import validate_models  # noqa: PLC0415

    validate_models(config, names)
    # Model stages write the seg/* masks every later stage reads, so they run
    # as a first phase: the analysis stages are planned once those committed.
    last_model = max((names.index(s) for s in MODEL_STAGES if s in names), default=-1)
    phases = [names[: last_model + 1], names[last_model + 1:]] if last_model >= 0 else [names]
    phases = [p for p in phases if p]
    token = secrets.token_hex(4)
    summary = RunSummary(token=token)
    store = CohortStore.open(store_url, mode="r+")
    with store.lock(f"petcohort run {token}"):
        records = store.stage_records()
        plan = plan_run(store, dict(STAGES), phases[0], config=config, force=force, token=token, code=code,
                        records=records)
        summary.skipped = list(plan.skipped)
        log.info("run %s: %d study-stages to run, %d up to date", token, len(plan.jobs), len(plan.skipped))
        session = None
        if client is None and (plan.jobs or out is not None or len(phases) > 1):
            session = _open_session(cluster_file)
            client = session.client
            summary.dashboard = session.dashboard_link
        elif client is not None:
            summary.dashboard = _dashboard_link(client)
        status = {"token": token, "status": "running", "started": _dt.datetime.now(_dt.timezone.utc).isoformat(),
                  "dashboard": summary.dashboard, "stages": names, "to_run": len(plan.jobs),
                  "skipped": len(plan.skipped)}
        store.write_json("run", status)  # read by the monitoring dashboard (its Dask link)
        write_run_config(store, config, out)
        try:
            totals = {n: sum(1 for t in plan.graph.tasks.values() if t.stage == n) for n in plan.graph.stages}
            with RunProgress(totals) as progress:
                if plan.jobs:
                    _collect(client, store, plan, _submit(client, plan), progress, summary)
            for later in phases[1:]:
                refresh_records(store, records, plan)   # only what the phase ran, not the whole store
                plan = plan_run(store, dict(STAGES), later, config=config, force=force, token=token, code=code,
                                records=records)
                summary.skipped.extend(plan.skipped)
                log.info("run %s: %d more study-stages to run, %d up to date", token, len(plan.jobs),
                         len(plan.skipped))
                totals = {n: sum(1 for t in plan.graph.tasks.values() if t.stage == n) for n in plan.graph.stages}
                with RunProgress(totals) as progress:
                    if plan.jobs:
                        _collect(client, store, plan, _submit(client, plan), progress, summary)
            if out is not None:
                _build_outputs(client, store, out, token)
        finally:
            if session is not None:
                session.close()
        summary.seconds = time.perf_counter() - t0
        for name in names:
            summary.per_stage[name] = {
                "done": sum(1 for _, s in summary.done if s == name),
                "skipped": sum(1 for _, s in summary.skipped if s == name),
                "failed": sum(1 for _, s, _r in summary.failed if s == name)}
        store.write_json("run", {**status, "status": "finished", "seconds": round(summary.seconds, 3),
                                 "per_stage": summary.per_stage, "failed": len(summary.failed)})
    render_summary(summary.per_stage, summary.failed, summary.seconds)
    return summary

