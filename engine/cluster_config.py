"""``cluster.yaml`` -> frozen dataclasses (parsed once, closed field sets).

Each kind has one frozen spec dataclass; a field not in it is refused with
its name (``CONFIG_UNKNOWN_FIELD``) instead of silently ignored, an unknown
kind with ``BAD_VALUE`` naming the kinds. :mod:`petcohort.engine.cluster` turns a
:class:`ClusterConfig` into a running cluster and client.

Parameter names follow the upstream constructors (dask-jobqueue,
https://jobqueue.dask.org/en/latest/clusters-api.html; dask-cuda,
https://docs.rapids.ai/api/dask-cuda/stable/api/; dask-kubernetes operator,
https://kubernetes.dask.org/en/latest/operator_kubecluster.html).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from petcohort.engine.errors import ConfigError

__all__ = ["LocalSpec", "LocalCudaSpec", "ExistingSpec", "JobqueueSpec", "KubernetesSpec", "ClusterConfig",
           "KINDS", "EXTRAS", "parse_cluster_config", "load_cluster_config"]


def _freeze(d: dict[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((d or {}).items()))


@dataclass(frozen=True)
class LocalSpec:
    """A ``LocalCluster`` of worker processes bound to 127.0.0.1.

    ``n_workers`` None means one per CPU core (at most 8); one thread per
    worker because the kernels hold the GIL-free C loops of numpy/cc3d and a
    second thread mostly doubles memory. ``dashboard_address`` None disables
    the dashboard; ``"127.0.0.1:0"`` picks a free port.
    """

    n_workers: int | None = None
    threads_per_worker: int = 1
    processes: bool = True
    memory_limit: str | int | None = "auto"
    dashboard_address: str | None = "127.0.0.1:8787"
    resources: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class LocalCudaSpec:
    """``dask_cuda.LocalCUDACluster``: one worker per visible GPU (or ``devices``)."""

    devices: tuple[int, ...] | None = None
    memory_limit: str | int | None = "auto"
    rmm_pool_size: str | None = None
    threads_per_worker: int = 1
    dashboard_address: str | None = "127.0.0.1:8787"
    resources: tuple[tuple[str, Any], ...] = (("GPU", 1),)


@dataclass(frozen=True)
class ExistingSpec:
    """A running scheduler: exactly one of ``address`` / ``scheduler_file``."""

    address: str | None = None
    scheduler_file: str | None = None
    timeout_s: float = 10.0


@dataclass(frozen=True)
class JobqueueSpec:
    """A SLURM or PBS cluster of batch jobs (``dask_jobqueue``).

    ``lifetime``/``lifetime_stagger`` (e.g. ``"55m"``/``"4m"``) retire each
    worker before the job's walltime so Dask moves its tasks elsewhere instead
    of losing them to the batch system's kill. ``adapt`` scales between
    ``minimum`` and ``maximum`` jobs; otherwise ``n_workers`` jobs are started.
    The scheduler must be reachable from the compute nodes, so it listens on
    ``scheduler_host`` / ``interface`` (dask-jobqueue's default otherwise);
    its dashboard stays on 127.0.0.1 (reach it through an SSH tunnel).

    ``submit_timeout_s`` bounds each batch command (``sbatch``/``qsub``,
    ``squeue``); ``start_timeout_s`` bounds the wait for the first worker when
    jobs are asked for at start (``n_workers`` or ``adapt.minimum`` > 0);
    ``null`` waits as long as the queue takes. A job the batch system refuses,
    or one that can never start (e.g. an account the partition does not
    allow), is reported at once, whatever the timeouts.
    """

    cores: int = 1
    memory: str = "4GiB"
    processes: int = 1
    walltime: str = "01:00:00"
    queue: str | None = None
    account: str | None = None
    job_extra: tuple[str, ...] = ()
    job_script_prologue: tuple[str, ...] = ()
    interface: str | None = None
    scheduler_host: str | None = None
    local_directory: str | None = None
    n_workers: int = 0
    adapt: tuple[tuple[str, Any], ...] = ()
    lifetime: str | None = None
    lifetime_stagger: str | None = None
    resources: tuple[tuple[str, Any], ...] = ()
    dashboard_address: str | None = "127.0.0.1:8787"
    submit_timeout_s: float = 60.0
    start_timeout_s: float | None = 1800.0


@dataclass(frozen=True)
class KubernetesSpec:
    """A ``dask_kubernetes.operator.KubeCluster`` (Dask operator must be installed in the cluster)."""

    name: str = "petcohort"
    image: str = "ghcr.io/dask/dask:latest"
    n_workers: int = 2
    namespace: str | None = None
    resources: tuple[tuple[str, Any], ...] = ()
    adapt: tuple[tuple[str, Any], ...] = ()
    env: tuple[tuple[str, Any], ...] = ()


KINDS: dict[str, type] = {"local": LocalSpec, "local_cuda": LocalCudaSpec, "existing": ExistingSpec,
                          "slurm": JobqueueSpec, "pbs": JobqueueSpec, "kubernetes": KubernetesSpec}
EXTRAS = {"local_cuda": "gpu", "slurm": "slurm", "pbs": "pbs", "kubernetes": "kubernetes"}
_DICT_FIELDS = {"resources", "adapt", "env"}
_LIST_FIELDS = {"job_extra", "job_script_prologue", "devices"}


@dataclass(frozen=True)
class ClusterConfig:
    """A parsed ``cluster.yaml``: the kind and its frozen spec."""

    kind: str
    spec: Any
    source: str = "<default>"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self.spec):
            value = getattr(self.spec, f.name)
            if f.name in _DICT_FIELDS:
                value = dict(value)
            elif f.name in _LIST_FIELDS and value is not None:
                value = list(value)
            out[f.name] = value
        return out


def parse_cluster_config(data: dict[str, Any] | None, *, source: str = "<dict>") -> ClusterConfig:
    """Validate a mapping (the YAML document) into a :class:`ClusterConfig`.

    Raises
    ------
    ConfigError
        ``CONFIG_UNKNOWN_FIELD`` naming the field; ``BAD_VALUE`` for an unknown
        kind or a value out of range; ``BAD_TYPE`` for a value of the wrong type.
    """
    if data is not None and not isinstance(data, dict):
        raise ConfigError("BAD_TYPE", f"{source}: expected a mapping, got {type(data).__name__}")
    data = dict(data or {})
    kind = data.pop("kind", "local")
    if kind not in KINDS:
        raise ConfigError("BAD_VALUE",
                          f"{source}: kind {kind!r} is not one of {sorted(KINDS)}")
    cls = KINDS[kind]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError("CONFIG_UNKNOWN_FIELD",
                          f"{source}: field(s) {unknown} not allowed for kind {kind!r}; allowed: {sorted(fields)}")
    values: dict[str, Any] = {}
    for name, value in data.items():
        values[name] = _coerce(source, kind, name, value, getattr(cls(), name))
    spec = cls(**values)
    _check(source, kind, spec)
    return ClusterConfig(kind, spec, source)


def _coerce(source: str, kind: str, name: str, value: Any, default: Any) -> Any:
    where = f"{source}: {kind}.{name}"
    if name in _DICT_FIELDS:
        if value is None:
            return ()
        if not isinstance(value, dict):
            raise ConfigError("BAD_TYPE", f"{where} must be a mapping, got {value!r}")
        return _freeze(value)
    if name in _LIST_FIELDS:
        if value is None:
            return None if name == "devices" else ()
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError("BAD_TYPE", f"{where} must be a list, got {value!r}")
        return tuple(value)
    if value is None:
        return None
    if isinstance(default, bool) and not isinstance(value, bool):
        raise ConfigError("BAD_TYPE", f"{where} must be true/false, got {value!r}")
    if isinstance(default, float) and not isinstance(value, bool) and isinstance(value, (int, float)):
        return float(value)
    int_field = name in ("n_workers", "threads_per_worker", "cores") or (
        isinstance(default, int) and not isinstance(default, bool))
    if int_field and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ConfigError("BAD_VALUE", f"{where} must be a non-negative integer, got {value!r}")
    return value


def _check(source: str, kind: str, spec: Any) -> None:
    if kind == "existing":
        if (spec.address is None) == (spec.scheduler_file is None):
            raise ConfigError("BAD_VALUE",
                              f"{source}: kind 'existing' needs exactly one of address / scheduler_file")
        if spec.address is not None and "://" not in str(spec.address):
            raise ConfigError("BAD_VALUE",
                              f"{source}: existing.address must look like tcp://HOST:PORT, got {spec.address!r}")
        if not spec.timeout_s > 0:
            raise ConfigError("BAD_VALUE", f"{source}: existing.timeout_s must be > 0, got {spec.timeout_s!r}")
    if kind in ("slurm", "pbs"):
        _check_timeouts(source, kind, spec, ("submit_timeout_s", "start_timeout_s"))
    if kind in ("local", "local_cuda") and spec.threads_per_worker < 1:
        raise ConfigError("BAD_VALUE", f"{source}: {kind}.threads_per_worker must be >= 1")
    adapt = dict(getattr(spec, "adapt", ()))
    if adapt:
        bad = sorted(set(adapt) - {"minimum", "maximum"})
        if bad:
            raise ConfigError("CONFIG_UNKNOWN_FIELD", f"{source}: {kind}.adapt field(s) {bad}; allowed: maximum, minimum")
        lo, hi = adapt.get("minimum", 0), adapt.get("maximum", 1)
        if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi):
            raise ConfigError("BAD_VALUE",
                              f"{source}: {kind}.adapt needs integers 0 <= minimum <= maximum, got {adapt!r}")


def _check_timeouts(source: str, kind: str, spec: Any, names: tuple[str, ...]) -> None:
    """Each named timeout is a number of seconds > 0 (``start_timeout_s`` may be null: no limit)."""
    for name in names:
        value = getattr(spec, name)
        if value is None and name == "start_timeout_s":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError("BAD_TYPE", f"{source}: {kind}.{name} must be a number of seconds, got {value!r}")
        if not value > 0:
            raise ConfigError("BAD_VALUE", f"{source}: {kind}.{name} must be > 0 seconds, got {value!r}")


def load_cluster_config(path: str | os.PathLike | None = None) -> ClusterConfig:
    """Read ``cluster.yaml`` at ``path`` (None -> the default local cluster).

    Raises
    ------
    ConfigError
        ``CONFIG_FILE_MISSING`` when the file does not exist,
        ``CONFIG_BAD_YAML`` when it does not parse, and the errors of
        :func:`parse_cluster_config`.
    """
    if path is None:
        return ClusterConfig("local", LocalSpec())
    import yaml  # noqa: PLC0415 - only needed with a file

    p = Path(path)
    if not p.is_file():
        raise ConfigError("CONFIG_FILE_MISSING", f"cluster file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError("CONFIG_BAD_YAML", f"cluster file {str(p)!r} is not valid YAML: {exc}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError("BAD_TYPE", f"cluster file {str(p)!r} must hold a mapping, got {type(data).__name__}")
    return parse_cluster_config(data, source=p.name)
