"""``cluster.yaml`` -> frozen dataclasses -> a ``distributed.Client``.

The file is parsed once (:func:`load_cluster_config`, in
``engine/cluster_config.py``, re-exported here) into a :class:`ClusterConfig`
whose ``spec`` is one frozen dataclass per kind with a closed set of fields.
:func:`connect` turns the config into a running :class:`ClusterSession`
(client + owned cluster).

Kinds
-----
``local``      ``distributed.LocalCluster`` on 127.0.0.1 (default).
``local_cuda`` ``dask_cuda.LocalCUDACluster``: one worker per GPU, each
               advertising ``resources={"GPU": 1}`` (extra ``gpu``).
``existing``   a running scheduler (``address`` or ``scheduler_file``).
``slurm`` / ``pbs``  ``dask_jobqueue`` batch jobs (extras ``slurm``/``pbs``);
               a SLURM job script is checked with ``sbatch --test-only``
               before any job is submitted, and :func:`connect` waits (bounded)
               for the first worker, failing at once on a job that can never
               start (``engine/cluster_jobs.py``).
``kubernetes`` ``dask_kubernetes.operator.KubeCluster`` (extra ``kubernetes``).

Upstream constructors: dask-jobqueue
https://jobqueue.dask.org/en/latest/clusters-api.html, dask-cuda
https://docs.rapids.ai/api/dask-cuda/stable/api/, dask-kubernetes
https://kubernetes.dask.org/en/latest/operator_kubecluster.html.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from petcohort.engine.cluster_config import (KINDS, ClusterConfig, ExistingSpec, JobqueueSpec, KubernetesSpec,
                                             LocalCudaSpec, LocalSpec, load_cluster_config, parse_cluster_config)
from petcohort.engine.cluster_config import EXTRAS as _EXTRA
from petcohort.engine.cluster_jobs import start_jobs
from petcohort.engine.errors import ClusterError, ConfigError

__all__ = ["LocalSpec", "LocalCudaSpec", "ExistingSpec", "JobqueueSpec", "KubernetesSpec", "ClusterConfig",
           "ClusterSession", "KINDS", "parse_cluster_config", "load_cluster_config", "cluster_kwargs",
           "connect", "gpu_count"]

log = logging.getLogger(__name__)


def gpu_count() -> int:
    """Number of CUDA devices: ``nvidia-smi -L`` lines, else 1 when cupy sees a device, else 0."""
    from petcohort.engine.backend import gpu_available  # noqa: PLC0415 - the one cupy switch

    exe = shutil.which("nvidia-smi")
    if exe is not None:
        try:
            out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10, check=False).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        n = sum(1 for line in out.splitlines() if line.startswith("GPU "))
        if n:
            return n
    return 1 if gpu_available() else 0


_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _worker_args(spec: JobqueueSpec) -> list[str]:
    args: list[str] = []
    if spec.lifetime:
        args += ["--lifetime", spec.lifetime]
        if spec.lifetime_stagger:
            args += ["--lifetime-stagger", spec.lifetime_stagger]
    if spec.resources:
        args += ["--resources", ",".join(f"{k}={v}" for k, v in spec.resources)]
    if spec.scheduler_host in _LOOPBACK:
        # Workers of a loopback scheduler run on this machine: their HTTP
        # server (":0", every interface, by default) stays on loopback too.
        args += ["--dashboard-address", "127.0.0.1:0"]
    return args


def _loopback_http(kw: dict[str, Any]) -> None:
    """Keep the scheduler's HTTP server on 127.0.0.1 when the dashboard is off.

    With ``dashboard_address=None`` distributed still serves /health and
    /metrics, on port 8787 of the scheduler's listen address (which is every
    interface for an in-process cluster); a free loopback port instead.
    """
    if kw.get("dashboard_address") is None:
        kw["scheduler_kwargs"] = {"dashboard_address": "127.0.0.1:0"}


def _worker_environ(config: ClusterConfig) -> dict[str, Any]:
    """Dask config for the local kinds' worker processes, set before they are spawned.

    ``MALLOC_ARENA_MAX=1`` when each worker has one compute thread: Dask runs tasks in a
    non-main thread, whose glibc arena made CPU nnU-Net inference ~1.4x slower than the
    same call on the main thread (benchmarks/bench_nnunet.py, 1 worker: 79 -> 55 s for 6
    studies); one compute thread has nobody to contend with for a single arena. The nanny
    keeps these for the workers it restarts.
    """
    if config.kind in ("local", "local_cuda") and config.spec.threads_per_worker == 1 and \
            getattr(config.spec, "processes", True):
        return {"distributed.nanny.pre-spawn-environ.MALLOC_ARENA_MAX": 1}
    return {}


def cluster_kwargs(config: ClusterConfig) -> tuple[str, dict[str, Any]]:
    """The cluster class (``module:Name``) and keyword arguments ``config`` maps to.

    Pure: imports nothing optional, so the mapping of every kind is testable
    without dask-jobqueue, dask-cuda or dask-kubernetes installed.
    """
    s, kind = config.spec, config.kind
    if kind == "local":
        n = s.n_workers if s.n_workers else min(os.cpu_count() or 1, 8)
        kw: dict[str, Any] = dict(host="127.0.0.1", n_workers=n, threads_per_worker=s.threads_per_worker,
                                  processes=s.processes, memory_limit=s.memory_limit,
                                  dashboard_address=s.dashboard_address)
        _loopback_http(kw)
        if not s.processes:
            del kw["host"]  # threads only: in-process transport for scheduler and workers
        if s.resources:
            kw["resources"] = dict(s.resources)
        return "distributed:LocalCluster", kw
    if kind == "local_cuda":
        kw = dict(host="127.0.0.1", threads_per_worker=s.threads_per_worker, memory_limit=s.memory_limit,
                  dashboard_address=s.dashboard_address, resources=dict(s.resources))
        _loopback_http(kw)
        if s.devices is not None:
            kw["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in s.devices)
        if s.rmm_pool_size:
            kw["rmm_pool_size"] = s.rmm_pool_size
        return "dask_cuda:LocalCUDACluster", kw
    if kind in ("slurm", "pbs"):
        kw = dict(cores=s.cores, memory=s.memory, processes=s.processes, walltime=s.walltime,
                  job_extra_directives=list(s.job_extra), job_script_prologue=list(s.job_script_prologue),
                  worker_extra_args=_worker_args(s),
                  scheduler_options={"dashboard_address": s.dashboard_address or "127.0.0.1:0"})
        if s.scheduler_host is not None:
            # None: dask-jobqueue's default, the login node address the
            # compute nodes can reach; 127.0.0.1 only for tests.
            kw["scheduler_options"]["host"] = s.scheduler_host
        for name in ("queue", "account", "interface", "local_directory"):
            if getattr(s, name) is not None:
                kw[name] = getattr(s, name)
        cls = "SLURMCluster" if kind == "slurm" else "PBSCluster"
        return f"dask_jobqueue:{cls}", kw
    if kind == "kubernetes":
        kw = dict(name=s.name, image=s.image, n_workers=s.n_workers, resources=dict(s.resources),
                  env=dict(s.env))
        if s.namespace:
            kw["namespace"] = s.namespace
        return "dask_kubernetes.operator:KubeCluster", kw
    raise ConfigError("BAD_VALUE", f"kind {kind!r} has no cluster class (use connect())")


def _import_cluster_class(kind: str, target: str) -> Callable[..., Any]:
    import importlib  # noqa: PLC0415

    module, name = target.split(":")
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as exc:
        extra = _EXTRA.get(kind, kind)
        raise ClusterError("CLUSTER_DEPENDENCY_MISSING",
                           f"cluster kind {kind!r} needs {module.split('.')[0]!r} ({exc.name} not importable); "
                           f"install it with: pip install petcohort[{extra}]") from None


@dataclass
class ClusterSession:
    """A connected client and the cluster it owns (None for ``existing``)."""

    client: Any
    cluster: Any = None
    kind: str = "local"
    dashboard_link: str | None = None
    _closed: bool = field(default=False, repr=False)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def __enter__(self) -> "ClusterSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _scheduler_address(spec: ExistingSpec) -> str:
    if spec.address is not None:
        return str(spec.address)
    path = Path(spec.scheduler_file)
    # distributed.Client(scheduler_file=...) polls for the file without a
    # deadline; reading it here keeps "never hang" true.
    try:
        return str(json.loads(path.read_text())["address"])
    except (OSError, ValueError, KeyError) as exc:
        raise ClusterError("CLUSTER_UNREACHABLE",
                           f"scheduler_file {str(path)!r} cannot be read ({type(exc).__name__}); "
                           "is the scheduler running?") from None


def connect(config: ClusterConfig) -> ClusterSession:
    """Start (or reach) the cluster of ``config`` and return a connected session.

    Raises
    ------
    ClusterError
        ``CLUSTER_UNREACHABLE`` (no scheduler within ``timeout_s``),
        ``CLUSTER_DEPENDENCY_MISSING`` (optional package absent, naming the
        extra), ``NO_GPU`` (``local_cuda`` on a machine without a CUDA device);
        for ``slurm``/``pbs``: ``CLUSTER_SUBMIT_FAILED`` (the batch system
        refused the worker job, e.g. an unknown partition, or did not answer
        within ``submit_timeout_s``), ``CLUSTER_JOB_BLOCKED`` (the jobs can never
        start or ended before a worker joined), ``CLUSTER_NO_WORKERS`` (no worker
        within ``start_timeout_s``). The jobs submitted so far are cancelled.
    """
    from distributed import Client  # noqa: PLC0415

    if config.kind == "existing":
        spec = config.spec
        address = _scheduler_address(spec)
        try:
            client = Client(address, timeout=spec.timeout_s, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ClusterError("CLUSTER_UNREACHABLE",
                               f"no Dask scheduler answered at {address} within {spec.timeout_s:g} s "
                               f"({type(exc).__name__})") from None
        return ClusterSession(client, None, config.kind, _dashboard(client))
    if config.kind == "local_cuda" and gpu_count() == 0:
        raise ClusterError("NO_GPU", "cluster kind 'local_cuda' asked for but no CUDA device is visible "
                                     "(cupy and nvidia-smi see none); use kind 'local'")
    target, kwargs = cluster_kwargs(config)
    cls = _import_cluster_class(config.kind, target)
    import dask  # noqa: PLC0415

    with dask.config.set(_worker_environ(config)):
        cluster = cls(**kwargs)
    try:
        client = Client(cluster, set_as_default=False)
    except BaseException:
        cluster.close()
        raise
    session = ClusterSession(client, cluster, config.kind)
    try:
        if config.kind in ("slurm", "pbs"):
            start_jobs(config, cluster, session.client)
        elif config.kind == "kubernetes" and config.spec.adapt:
            adapt = dict(config.spec.adapt)
            cluster.adapt(minimum=adapt.get("minimum", 0), maximum=adapt.get("maximum", 1))
    except BaseException:
        session.close()  # cancels the jobs submitted so far
        raise
    session.dashboard_link = _dashboard(session.client)
    if session.dashboard_link:
        log.info("Dask dashboard: %s", session.dashboard_link)
    return session


def _dashboard(client: Any) -> str | None:
    try:
        return client.dashboard_link
    except Exception:  # no dashboard (disabled, or bokeh missing)
        return None
