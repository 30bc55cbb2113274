"""What one study-stage task does on a Dask worker, and the hashes that make runs resumable.

A task opens the store by URL, checks that the stages it depends on are
committed, hashes its inputs, calls the stage function, and commits the
outputs atomically (``CohortStore.commit_stage``: the record is written last).
Only a small summary dict travels back to the client.

Retry safety: Dask reruns a task whose worker died. The record carries the
run token (``run``); a task that finds a record of its own run for its
(study, stage) returns that record's summary instead of running again, and a
task killed before its commit point left no record, so it simply runs again.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from petcohort.engine.allocator import tune_malloc
from petcohort.engine.errors import PetCohortError
from petcohort.pipelines.config import RunConfig
from petcohort.pipelines.stages import Stage, StageContext, StageOutput

__all__ = ["StageJob", "study_digest", "fingerprint", "input_parts", "input_hash", "execute_study_stage",
           "upstream_problem", "record_hash"]

_MAX_MESSAGE = 500
_STORES: dict[str, Any] = {}
_STORES_LOCK = threading.Lock()


def _sha(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def study_digest(attrs: dict[str, Any], array_names: list[str], stage_arrays: set[str]) -> str:
    """Hash of a study's own inputs: its attrs and the names of arrays no stage wrote.

    Arrays written by stages (listed in their records) are excluded, so a
    stage's outputs never change the input hash of an earlier stage.
    """
    inputs = sorted(set(array_names) - stage_arrays)
    return _sha({"attrs": attrs, "arrays": inputs})


def fingerprint(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """What identifies the outputs of a committed study-stage (None when absent).

    ``started`` is included: a rerun of an upstream stage may produce other
    outputs, so it invalidates its dependants even with equal hashes.
    """
    if record is None:
        return None
    return {k: record.get(k) for k in ("status", "input_hash", "config_hash", "code_version", "started")}


def record_hash(record: dict[str, Any] | None) -> str | None:
    """16-hex hash of a record's :func:`fingerprint` (None when there is no record)."""
    return None if record is None else _sha(fingerprint(record))


def input_parts(base: dict[str, str], upstream: dict[str, dict[str, Any] | None]) -> dict[str, str | None]:
    """The named inputs of a study-stage: ``base`` (``{"study": digest, ...}``) plus one hash per upstream record.

    ``upstream`` maps ``"study/<stage>"`` (or ``"baseline/<stage>"``) to the
    record (or None). Records keep these parts (``inputs``) so that
    ``manifest --why`` can say which input changed.
    """
    return {**base, **{k: record_hash(v) for k, v in sorted(upstream.items())}}


def input_hash(parts: dict[str, str | None]) -> str:
    """Input hash of a study-stage: the hash of its :func:`input_parts`."""
    return _sha(dict(sorted(parts.items())))


@dataclass(frozen=True)
class StageJob:
    """Everything a worker needs to run one study-stage (pickled to the worker).

    ``requires`` / ``baseline_requires`` hold only the stages that apply to
    the study / its baseline (decided by the client, which knows the attrs).
    ``inputs`` are the named inputs known at planning time (``{"study":
    digest}`` and the model records the study's masks come from); the
    upstream records are added on the worker, when they are final.
    ``params`` (resolved config values the stage reads) and ``code`` (its
    fingerprint, :func:`petcohort.pipelines.fingerprint.stage_code`) go into
    the record as they are.
    """

    store_url: str
    study: str
    stage: Stage
    baseline: str | None
    requires: tuple[str, ...]
    baseline_requires: tuple[str, ...]
    config: RunConfig
    config_hash: str
    inputs: dict[str, str | None]
    code_version: str
    token: str
    params: dict[str, Any] = field(default_factory=dict)
    code: dict[str, Any] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """The study digest (``inputs["study"]``)."""
        return str(self.inputs.get("study"))

    def provenance(self) -> dict[str, Any]:
        """The record fields that say how a result is made: params, code, config hash, code version."""
        return {"params": self.params, "code": self.code, "config_hash": self.config_hash,
                "code_version": self.code_version}


def upstream_records(store: Any, job: StageJob) -> dict[str, dict[str, Any] | None]:
    """The records the job's input hash depends on, read now."""
    out: dict[str, dict[str, Any] | None] = {f"study/{r}": store.stage_record(job.study, r) for r in job.requires}
    if job.baseline is not None:
        out.update({f"baseline/{r}": store.stage_record(job.baseline, r) for r in job.baseline_requires})
    return out


def upstream_problem(job: StageJob, records: dict[str, dict[str, Any] | None]) -> tuple[str, str] | None:
    """(reason, message) when an input of the job is missing or failed, else None."""
    if job.stage.needs_baseline and job.baseline is None:
        return "NO_BASELINE", (f"stage {job.stage.name!r} needs the baseline study of {job.study!r}, "
                                    "which is not in the store")
    for name, rec in records.items():
        if rec is None:
            return "UPSTREAM_MISSING", f"stage {job.stage.name!r} needs {name} which has no record (run it first)"
        if rec.get("status") != "committed":
            return "UPSTREAM_FAILED", f"stage {job.stage.name!r} needs {name} which failed ({rec.get('reason')})"
    return None


def _open_store(url: str) -> Any:
    from petcohort.storage.store import CohortStore  # noqa: PLC0415 - keep import light on the client

    with _STORES_LOCK:
        store = _STORES.get(url)
        if store is None:
            store = _STORES[url] = CohortStore.open(url, mode="r+")
        return store


def _worker_name() -> str:
    try:
        from distributed import get_worker  # noqa: PLC0415

        return str(get_worker().name)
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def _result(job: StageJob, record: dict[str, Any]) -> dict[str, Any]:
    return {"study": job.study, "stage": job.stage.name, "status": record.get("status"),
            "reason": record.get("reason"), "seconds": record.get("seconds"), "worker": record.get("worker")}


def execute_study_stage(job: StageJob, *_deps: Any) -> dict[str, Any]:
    """Run one study-stage on a worker and commit it; returns a small summary dict.

    ``_deps`` are the summaries of the tasks it depends on; they only order
    the tasks (the inputs are read back from the store).
    """
    tune_malloc()  # once per process: large arrays reused from the heap, not mmapped per task (engine/allocator.py)
    store = _open_store(job.store_url)
    name = job.stage.name
    existing = store.stage_record(job.study, name)
    if existing is not None and existing.get("run") == job.token:
        return _result(job, existing)  # a retry after the worker died past the commit point
    upstream = upstream_records(store, job)
    parts = input_parts(job.inputs, upstream)
    record: dict[str, Any] = {"input_hash": input_hash(parts), "inputs": parts, **job.provenance(),
                              "started": _now(), "worker": _worker_name(), "run": job.token, "reason": None,
                              "message": "", "summary": {}}
    problem = upstream_problem(job, upstream)
    if problem is not None:
        record.update(reason=problem[0], message=problem[1], seconds=0.0)
        store.fail_stage(job.study, name, record=record)
        return _result(job, {**record, "status": "failed"})
    t0 = time.perf_counter()
    try:
        attrs = store.study_attrs(job.study)
        ctx = StageContext(store=store, key=job.study, attrs=attrs, config=job.config, baseline_key=job.baseline)
        output = job.stage.fn(ctx)
        if not isinstance(output, StageOutput):
            raise TypeError(f"stage {name!r} returned {type(output).__name__}, expected StageOutput")
        record.update(summary=dict(output.summary), seconds=round(time.perf_counter() - t0, 6))
        store.commit_stage(job.study, name, arrays=dict(output.arrays), record=record)
        return _result(job, {**record, "status": "committed"})
    except PetCohortError as exc:
        record.update(reason=exc.reason, message=exc.message[:_MAX_MESSAGE])
    except Exception as exc:  # noqa: BLE001 - every failure is recorded, the run goes on
        # Type and message only: a traceback could carry array values or paths.
        record.update(reason="INTERNAL_ERROR", message=f"{type(exc).__name__}: {exc}"[:_MAX_MESSAGE])
    record.update(seconds=round(time.perf_counter() - t0, 6), summary={})
    store.fail_stage(job.study, name, record=record)
    return _result(job, {**record, "status": "failed"})


def build_outputs_task(store_url: str, out: str) -> str:
    """Dask task: the cohort tables and results.zarr (``pipelines.tables.build_outputs``)."""
    from petcohort.pipelines.tables import build_outputs  # noqa: PLC0415 - written by another module
    from petcohort.storage.store import CohortStore  # noqa: PLC0415

    build_outputs(CohortStore.open(store_url, mode="r"), out)
    return out
