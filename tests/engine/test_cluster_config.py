"""cluster.yaml parsing (every example, bad files) and cluster construction without a real cluster."""
from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from petcohort.engine import cluster as cl
from petcohort.engine.errors import ClusterError, ConfigError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("cluster-*.yaml"))


def test_every_example_parses():
    kinds = {cl.load_cluster_config(p).kind for p in EXAMPLES}
    assert kinds == {"local", "local_cuda", "existing", "slurm", "pbs", "kubernetes"}
    assert cl.load_cluster_config(ROOT / "cluster.yaml").kind == "local"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_round_trip(path):
    c = cl.load_cluster_config(path)
    assert cl.parse_cluster_config(c.to_dict()) == cl.ClusterConfig(c.kind, c.spec, "<dict>")
    if c.kind != "existing":
        target, kwargs = cl.cluster_kwargs(c)
        assert ":" in target and kwargs


def test_default_is_local_on_loopback():
    c = cl.load_cluster_config(None)
    target, kw = cl.cluster_kwargs(c)
    assert target == "distributed:LocalCluster"
    assert kw["host"] == "127.0.0.1" and kw["threads_per_worker"] == 1 and kw["processes"] is True
    assert kw["n_workers"] >= 1


@pytest.mark.parametrize("text, reason, needle", [
    ("kind: mesos\n", "CLUSTER_UNKNOWN_KIND", "mesos"),
    ("kind: local\nn_worker: 2\n", "CLUSTER_UNKNOWN_FIELD", "n_worker"),
    ("kind: slurm\nimage: x\n", "CLUSTER_UNKNOWN_FIELD", "image"),
    ("kind: slurm\nadapt: {minimum: 1, maximal: 3}\n", "CLUSTER_UNKNOWN_FIELD", "maximal"),
    ("kind: slurm\nadapt: {minimum: 4, maximum: 3}\n", "CLUSTER_BAD_VALUE", "minimum"),
    ("kind: local\nn_workers: -1\n", "CLUSTER_BAD_VALUE", "n_workers"),
    ("kind: local\nn_workers: two\n", "CLUSTER_BAD_VALUE", "n_workers"),
    ("kind: local\nprocesses: 1\n", "CLUSTER_BAD_VALUE", "processes"),
    ("kind: local\nresources: GPU\n", "CLUSTER_BAD_VALUE", "resources"),
    ("kind: slurm\njob_extra: --exclusive\n", "CLUSTER_BAD_VALUE", "job_extra"),
    ("kind: existing\n", "CLUSTER_BAD_VALUE", "exactly one"),
    ("kind: existing\naddress: tcp://a:1\nscheduler_file: f\n", "CLUSTER_BAD_VALUE", "exactly one"),
    ("kind: existing\naddress: 127.0.0.1\n", "CLUSTER_BAD_VALUE", "tcp://"),
    ("kind: existing\naddress: tcp://a:1\ntimeout_s: 0\n", "CLUSTER_BAD_VALUE", "timeout_s"),
    ("- a\n- b\n", "CLUSTER_BAD_VALUE", "mapping"),
    ("kind: [local\n", "CLUSTER_BAD_YAML", "YAML"),
])
def test_bad_files(tmp_path, text, reason, needle):
    p = tmp_path / "cluster.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as exc:
        cl.load_cluster_config(p)
    assert exc.value.reason == reason and needle in str(exc.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as exc:
        cl.load_cluster_config(tmp_path / "nope.yaml")
    assert exc.value.reason == "CLUSTER_FILE_MISSING"


def test_slurm_mapping_has_lifetime_and_resources():
    c = cl.parse_cluster_config({"kind": "slurm", "cores": 4, "memory": "8GiB", "walltime": "00:30:00",
                                 "queue": "short", "account": "lab", "job_extra": ["--gres=gpu:1"],
                                 "lifetime": "25m", "lifetime_stagger": "2m", "resources": {"GPU": 1},
                                 "adapt": {"minimum": 1, "maximum": 5}})
    target, kw = cl.cluster_kwargs(c)
    assert target == "dask_jobqueue:SLURMCluster"
    assert kw["worker_extra_args"] == ["--lifetime", "25m", "--lifetime-stagger", "2m", "--resources", "GPU=1"]
    assert kw["job_extra_directives"] == ["--gres=gpu:1"]
    assert (kw["queue"], kw["account"], kw["cores"], kw["memory"]) == ("short", "lab", 4, "8GiB")
    assert dict(c.spec.adapt) == {"minimum": 1, "maximum": 5}


def test_slurm_job_script_when_installed():
    pytest.importorskip("dask_jobqueue")
    c = cl.load_cluster_config(ROOT / "examples" / "cluster-slurm.yaml")
    c = cl.parse_cluster_config({**c.to_dict(), "scheduler_host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"})
    cls = cl._import_cluster_class("slurm", cl.cluster_kwargs(c)[0])
    cluster = cls(**cl.cluster_kwargs(c)[1])
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH" in script and "--lifetime 110m" in script


def test_kubernetes_mapping():
    c = cl.load_cluster_config(ROOT / "examples" / "cluster-kubernetes.yaml")
    target, kw = cl.cluster_kwargs(c)
    assert target == "dask_kubernetes.operator:KubeCluster"
    assert kw["image"].endswith("petcohort:0.1.0") and kw["n_workers"] == 4
    assert kw["resources"]["limits"]["memory"] == "4Gi"


def test_local_cuda_mapping():
    c = cl.parse_cluster_config({"kind": "local_cuda", "devices": [0, 2], "rmm_pool_size": "8GB"})
    target, kw = cl.cluster_kwargs(c)
    assert target == "dask_cuda:LocalCUDACluster"
    assert kw["CUDA_VISIBLE_DEVICES"] == "0,2" and kw["resources"] == {"GPU": 1}


@pytest.mark.parametrize("kind", ["slurm", "pbs", "kubernetes"])
def test_missing_dependency_names_the_extra(kind, monkeypatch):
    import sys

    # A None entry in sys.modules makes the import fail as if not installed.
    for name in ("dask_jobqueue", "dask_kubernetes", "dask_kubernetes.operator"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ClusterError) as exc:
        cl.connect(cl.parse_cluster_config({"kind": kind}))
    assert exc.value.reason == "CLUSTER_DEPENDENCY_MISSING"
    assert f"pip install petcohort[{kind}]" in str(exc.value)


def test_local_cuda_without_gpu(monkeypatch):
    monkeypatch.setattr(cl, "gpu_count", lambda: 0)
    with pytest.raises(ClusterError) as exc:
        cl.connect(cl.parse_cluster_config({"kind": "local_cuda"}))
    assert exc.value.reason == "NO_GPU"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_address_fails_within_timeout():
    c = cl.parse_cluster_config({"kind": "existing", "address": f"tcp://127.0.0.1:{_free_port()}",
                                 "timeout_s": 1.5})
    t0 = time.monotonic()
    with pytest.raises(ClusterError) as exc:
        cl.connect(c)
    elapsed = time.monotonic() - t0
    assert exc.value.reason == "CLUSTER_UNREACHABLE" and "1.5 s" in str(exc.value)
    assert elapsed < 1.5 + 5.0


def test_missing_scheduler_file_fails_fast(tmp_path):
    c = cl.parse_cluster_config({"kind": "existing", "scheduler_file": str(tmp_path / "sched.json")})
    t0 = time.monotonic()
    with pytest.raises(ClusterError) as exc:
        cl.connect(c)
    assert exc.value.reason == "CLUSTER_UNREACHABLE" and time.monotonic() - t0 < 2


def test_local_threads_cluster_connects():
    c = cl.parse_cluster_config({"kind": "local", "n_workers": 1, "processes": False,
                                 "dashboard_address": None, "resources": {"GPU": 1}})
    with cl.connect(c) as session:
        assert session.client.submit(sum, [1, 2, 3]).result() == 6
        workers = session.client.scheduler_info()["workers"].values()
        assert [w["resources"] for w in workers] == [{"GPU": 1}]
    assert session.client.status == "closed"


def test_single_thread_local_workers_get_one_malloc_arena():
    import os

    one = cl.parse_cluster_config({"kind": "local", "n_workers": 1, "threads_per_worker": 1,
                                   "dashboard_address": None})
    assert cl._worker_environ(one) == {"distributed.nanny.pre-spawn-environ.MALLOC_ARENA_MAX": 1}
    assert cl._worker_environ(cl.parse_cluster_config({"kind": "local", "threads_per_worker": 2})) == {}
    assert cl._worker_environ(cl.parse_cluster_config({"kind": "local", "processes": False})) == {}
    assert cl._worker_environ(cl.parse_cluster_config({"kind": "existing", "address": "tcp://127.0.0.1:1"})) == {}
    with cl.connect(one) as session:                       # a real worker process sees it at start-up
        env = session.client.run(lambda: os.environ.get("MALLOC_ARENA_MAX"))
    assert list(env.values()) == ["1"]
