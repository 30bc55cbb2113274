"""Batch-system workers (``slurm`` / ``pbs``): submit the first dask-jobqueue jobs, wait (bounded) for a worker.

dask-jobqueue submits from a background task, so a refused ``sbatch`` is only
logged there and a job that can never start leaves a run waiting for ever.
:func:`start_jobs` turns both into a :class:`~petcohort.engine.errors.ClusterError`
(``CLUSTER_SUBMIT_FAILED``, ``CLUSTER_JOB_BLOCKED``, ``CLUSTER_NO_WORKERS``);
:func:`petcohort.engine.cluster.connect` calls it for those kinds.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from typing import Any

from petcohort.engine.cluster_config import ClusterConfig, JobqueueSpec
from petcohort.engine.errors import ClusterError

__all__ = ["SLURM_BLOCKED_REASONS", "start_jobs"]

# SLURM job reason codes of a pending job that no amount of waiting resolves
# (squeue(1), "JOB REASON CODES"): the job must be fixed and resubmitted.
SLURM_BLOCKED_REASONS = frozenset({"AccountNotAllowed", "InvalidAccount", "InvalidQOS", "QOSNotAllowed",
                                   "PartitionConfig", "BadConstraints", "DependencyNeverSatisfied"})
_JOB_ALIVE = frozenset({"PENDING", "CONFIGURING", "RUNNING", "REQUEUED", "RESIZING", "SUSPENDED"})
_POLL_S = 1.0  # how often the first-worker wait looks at the queue


def start_jobs(config: ClusterConfig, cluster: Any, client: Any) -> None:
    """Submit the first jobs of a dask-jobqueue cluster and wait (bounded) for a worker.

    dask-jobqueue submits from a background task (``cluster.scale`` and the
    adaptive loop), so a refused ``sbatch`` is only logged there and a job that
    can never start leaves the run waiting for ever; both become a
    :class:`ClusterError` here.
    """
    spec: JobqueueSpec = config.spec
    if config.kind == "slurm":
        _slurm_test_submit(cluster.job_script(), spec.submit_timeout_s)
    adapt = dict(spec.adapt)
    if adapt:
        cluster.adapt(minimum=adapt.get("minimum", 0), maximum=adapt.get("maximum", 1))
        first = adapt.get("minimum", 0)
    else:
        first = spec.n_workers
        if first:
            cluster.scale(jobs=first)
            _submit_now(cluster, spec.submit_timeout_s)
    if first:
        _wait_first_worker(config.kind, cluster, client, spec)


def _run_batch_command(args: list[str], timeout_s: float, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run a batch-system command with a deadline (its own retries can outlast any run)."""
    if shutil.which(args[0]) is None:
        raise ClusterError("CLUSTER_SUBMIT_FAILED", f"{args[0]!r} is not on PATH: this machine is not a "
                                                    "submit host of the batch system")
    try:
        return subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise ClusterError("CLUSTER_SUBMIT_FAILED", f"{' '.join(args[:2])!r} did not answer within {timeout_s:g} s "
                                                    "(submit_timeout_s); is the batch controller up?") from None


def _last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "(no message)"


def _slurm_test_submit(script: str, timeout_s: float) -> None:
    """``sbatch --test-only`` on the worker job script: a bad partition (or, where
    accounting enforces associations, account) is refused before any job exists.

    ``--test-only`` validates the script and its options against the controller
    and submits nothing (sbatch(1)); the script goes in on stdin.
    """
    res = _run_batch_command(["sbatch", "--test-only"], timeout_s, stdin=script)
    if res.returncode != 0:
        raise ClusterError("CLUSTER_SUBMIT_FAILED",
                           f"SLURM refused the worker job: {_last_error_line(res.stderr + res.stdout)} "
                           "(check queue/account/memory/walltime in the cluster file)")


def _submit_now(cluster: Any, timeout_s: float) -> None:
    """Run the submissions ``cluster.scale`` scheduled and raise their failure.

    ``SpecCluster._correct_state`` is the coroutine behind ``scale`` (the one
    ``SpecCluster.__init__`` itself waits on); awaiting it here returns once the
    pending submissions have finished.
    """
    try:
        cluster.sync(cluster._correct_state, callback_timeout=timeout_s)
    except RuntimeError as exc:  # dask-jobqueue: the submit command exited non-zero
        raise ClusterError("CLUSTER_SUBMIT_FAILED",
                           f"the batch system refused the worker job: {_submit_stderr(str(exc))}") from None
    except TimeoutError:
        raise ClusterError("CLUSTER_SUBMIT_FAILED",
                           f"job submission did not finish within {timeout_s:g} s (submit_timeout_s)") from None
    missing = [name for name, job in cluster.workers.items() if not getattr(job, "job_id", None)]
    if missing:  # failed in the background submission (logged there)
        raise ClusterError("CLUSTER_SUBMIT_FAILED",
                           f"{len(missing)} of {len(cluster.workers)} worker job(s) were not submitted "
                           "(the submit command failed; see the log)")


def _submit_stderr(message: str) -> str:
    """The submit command's own error from dask-jobqueue's RuntimeError text (not the script path)."""
    _, _, err = message.partition("stderr:")
    return _last_error_line(err or message)


def _job_ids(cluster: Any) -> list[str]:
    return sorted(str(job.job_id) for job in list(cluster.workers.values()) if getattr(job, "job_id", None))


def _slurm_job_states(job_ids: list[str], timeout_s: float) -> dict[str, tuple[str, str, str]] | None:
    """job id -> (state, reason code, reason text) from ``squeue``; None when squeue cannot say.

    ``squeue --json`` (Slurm >= 21.08) carries the reason *code* next to its
    description; ``-o %T|%r`` prints the description when there is one.
    Jobs that have left the queue are simply absent.
    """
    ids = ",".join(job_ids)
    res = _run_batch_command(["squeue", "--json", "-j", ids], timeout_s)
    if res.returncode == 0:
        try:
            jobs = json.loads(res.stdout).get("jobs", [])
        except ValueError:
            jobs = None
        if jobs is not None:
            out = {}
            for j in jobs:
                state = j.get("job_state")
                state = state[0] if isinstance(state, list) and state else state  # list from Slurm 23.02
                out[str(j.get("job_id"))] = (str(state), str(j.get("state_reason", "")),
                                             str(j.get("state_description") or j.get("state_reason", "")))
            return out
    res = _run_batch_command(["squeue", "-h", "-j", ids, "-o", "%i|%T|%r"], timeout_s)
    if res.returncode != 0:
        # squeue refuses ids it no longer knows ("Invalid job id specified")
        return {} if "invalid job id" in res.stderr.lower() else None
    out = {}
    for line in res.stdout.splitlines():
        jid, _, rest = line.partition("|")
        state, _, reason = rest.partition("|")
        out[jid.strip()] = (state.strip(), reason.strip(), reason.strip())
    return out


def _blocked_jobs(kind: str, job_ids: list[str], timeout_s: float) -> str | None:
    """Why the jobs can never give a worker (all ended, or pending for a reason no wait resolves); else None."""
    if kind != "slurm" or not job_ids:
        return None
    states = _slurm_job_states(job_ids, timeout_s)
    if states is None:
        return None
    blocked = sorted({text for state, code, text in states.values()
                      if state == "PENDING" and code in SLURM_BLOCKED_REASONS})
    if blocked:
        return "SLURM will never start the worker job(s): " + "; ".join(blocked)
    alive = [jid for jid, (state, _, _) in states.items() if state in _JOB_ALIVE]
    if not alive:
        ended = sorted({state for state, _, _ in states.values()}) or ["left the queue"]
        return (f"the worker job(s) {', '.join(job_ids)} ended ({', '.join(ended)}) before any worker joined; "
                "see the jobs' output files (job_extra: --output=...)")
    return None


def _wait_first_worker(kind: str, cluster: Any, client: Any, spec: JobqueueSpec) -> None:
    """Wait until one worker joined, at most ``start_timeout_s``; fail at once on blocked jobs.

    Bounded polling: the scheduler is asked for a worker for up to ``_POLL_S``
    at a time, the queue is asked between, and the deadline is absolute.
    """
    limit = spec.start_timeout_s
    deadline = None if limit is None else time.monotonic() + limit
    while True:
        left = _POLL_S if deadline is None else min(_POLL_S, deadline - time.monotonic())
        if left > 0:
            try:
                client.wait_for_workers(1, timeout=left)
                return
            except TimeoutError:
                pass
        why = _blocked_jobs(kind, _job_ids(cluster), spec.submit_timeout_s)
        if why is not None:
            raise ClusterError("CLUSTER_JOB_BLOCKED", why)
        if deadline is not None and time.monotonic() >= deadline:
            raise ClusterError("CLUSTER_NO_WORKERS",
                               f"no Dask worker joined within {limit:g} s (start_timeout_s) of submitting "
                               f"{len(_job_ids(cluster))} job(s); the queue may be busy: raise start_timeout_s "
                               "or set it to null to wait as long as it takes")
