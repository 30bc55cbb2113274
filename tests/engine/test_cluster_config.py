"""cluster.yaml parsing (every example, bad files) and cluster construction without a real cluster."""
from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from petcohort.engine import cluster as cl
from petcohort.engine import cluster_jobs as cj
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
    ("kind: mesos\n", "BAD_VALUE", "mesos"),
    ("kind: local\nn_worker: 2\n", "CONFIG_UNKNOWN_FIELD", "n_worker"),
    ("kind: slurm\nimage: x\n", "CONFIG_UNKNOWN_FIELD", "image"),
    ("kind: slurm\nadapt: {minimum: 1, maximal: 3}\n", "CONFIG_UNKNOWN_FIELD", "maximal"),
    ("kind: slurm\nadapt: {minimum: 4, maximum: 3}\n", "BAD_VALUE", "minimum"),
    ("kind: local\nn_workers: -1\n", "BAD_VALUE", "n_workers"),
    ("kind: local\nn_workers: two\n", "BAD_VALUE", "n_workers"),
    ("kind: local\nprocesses: 1\n", "BAD_TYPE", "processes"),
    ("kind: local\nresources: GPU\n", "BAD_TYPE", "resources"),
    ("kind: slurm\njob_extra: --exclusive\n", "BAD_TYPE", "job_extra"),
    ("kind: existing\n", "BAD_VALUE", "exactly one"),
    ("kind: existing\naddress: tcp://a:1\nscheduler_file: f\n", "BAD_VALUE", "exactly one"),
    ("kind: existing\naddress: 127.0.0.1\n", "BAD_VALUE", "tcp://"),
    ("kind: existing\naddress: tcp://a:1\ntimeout_s: 0\n", "BAD_VALUE", "timeout_s"),
    ("- a\n- b\n", "BAD_TYPE", "mapping"),
    ("kind: [local\n", "CONFIG_BAD_YAML", "YAML"),
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
    assert exc.value.reason == "CONFIG_FILE_MISSING"


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


# -- batch jobs: timeouts, loopback workers, and reading the queue (no SLURM needed) ----------------------------
@pytest.mark.parametrize("text, reason, needle", [
    ("kind: slurm\nsubmit_timeout_s: 0\n", "BAD_VALUE", "submit_timeout_s"),
    ("kind: pbs\nstart_timeout_s: -5\n", "BAD_VALUE", "start_timeout_s"),
    ("kind: slurm\nstart_timeout_s: soon\n", "BAD_TYPE", "start_timeout_s"),
    ("kind: slurm\nsubmit_timeout_s: null\n", "BAD_TYPE", "submit_timeout_s"),
])
def test_bad_batch_timeouts(tmp_path, text, reason, needle):
    p = tmp_path / "cluster.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as exc:
        cl.load_cluster_config(p)
    assert exc.value.reason == reason and needle in str(exc.value)


def test_batch_timeouts_parse_and_stay_out_of_the_constructor():
    c = cl.parse_cluster_config({"kind": "slurm", "submit_timeout_s": 20, "start_timeout_s": None})
    assert (c.spec.submit_timeout_s, c.spec.start_timeout_s) == (20.0, None)
    default = cl.parse_cluster_config({"kind": "slurm"}).spec
    assert default.submit_timeout_s > 0 and default.start_timeout_s > 0  # never an unbounded wait by default
    kw = cl.cluster_kwargs(c)[1]
    assert "submit_timeout_s" not in kw and "start_timeout_s" not in kw


def test_loopback_scheduler_keeps_worker_http_on_loopback():
    local = cl.parse_cluster_config({"kind": "slurm", "scheduler_host": "127.0.0.1"})
    assert cl.cluster_kwargs(local)[1]["worker_extra_args"][-2:] == ["--dashboard-address", "127.0.0.1:0"]
    site = cl.parse_cluster_config({"kind": "slurm", "interface": "ib0"})
    assert "--dashboard-address" not in cl.cluster_kwargs(site)[1]["worker_extra_args"]


def _squeue(monkeypatch, json_out: str | None, text_out: str = "", text_rc: int = 0, text_err: str = ""):
    """Fake squeue: ``--json`` answers ``json_out`` (None: not supported), ``-o`` answers ``text_out``."""
    import subprocess

    def run(args, timeout_s, stdin=None):
        if "--json" in args:
            return subprocess.CompletedProcess(args, 0 if json_out is not None else 1, json_out or "", "")
        return subprocess.CompletedProcess(args, text_rc, text_out, text_err)

    monkeypatch.setattr(cj, "_run_batch_command", run)


def test_blocked_reason_read_from_squeue_json(monkeypatch):
    import json

    jobs = [{"job_id": 7, "job_state": "PENDING", "state_reason": "AccountNotAllowed",
             "state_description": "Job's account not known, so it can't use this partition (p allows a)"},
            {"job_id": 8, "job_state": ["PENDING"], "state_reason": "Resources", "state_description": ""}]
    _squeue(monkeypatch, json.dumps({"jobs": jobs}))
    assert cj._slurm_job_states(["7", "8"], 5)["8"] == ("PENDING", "Resources", "Resources")  # Slurm >= 23.02
    why = cj._blocked_jobs("slurm", ["7", "8"], 5)
    assert why.startswith("SLURM will never start") and "(p allows a)" in why
    jobs[0]["state_reason"] = "Priority"
    _squeue(monkeypatch, json.dumps({"jobs": jobs}))
    assert cj._blocked_jobs("slurm", ["7", "8"], 5) is None  # waiting in the queue is not an error
    assert cj._blocked_jobs("pbs", ["7"], 5) is None  # no queue reading for PBS: the deadline only


def test_ended_jobs_and_the_text_fallback(monkeypatch):
    _squeue(monkeypatch, None, "7|FAILED|NonZeroExitCode\n8|COMPLETED|None\n")
    assert "ended (COMPLETED, FAILED)" in cj._blocked_jobs("slurm", ["7", "8"], 5)
    _squeue(monkeypatch, None, "7|PENDING|InvalidQOS\n")
    assert "InvalidQOS" in cj._blocked_jobs("slurm", ["7"], 5)
    _squeue(monkeypatch, None, "", 1, "slurm_load_jobs error: Invalid job id specified")
    assert "left the queue" in cj._blocked_jobs("slurm", ["7"], 5)
    _squeue(monkeypatch, None, "", 1, "slurm_load_jobs error: Unable to contact slurm controller")
    assert cj._blocked_jobs("slurm", ["7"], 5) is None  # cannot tell: keep waiting (bounded by the deadline)


class _Job:
    def __init__(self, job_id):
        self.job_id = job_id


class _FakeCluster:
    def __init__(self, jobs, error=None):
        self.workers = {f"w{i}": _Job(j) for i, j in enumerate(jobs)}
        self._error = error

    def _correct_state(self):
        return None

    def sync(self, func, callback_timeout=None):
        if self._error is not None:
            raise self._error


class _NoWorkers:
    def wait_for_workers(self, n, timeout):
        raise TimeoutError(f"no worker within {timeout}")


def test_submit_failure_names_the_batch_systems_message():
    err = RuntimeError("Command exited with non-zero exit code.\nExit code: 1\nCommand:\nsbatch /tmp/x.sh\n"
                       "stdout:\n\nstderr:\nsbatch: error: Batch job submission failed: Invalid account\n")
    with pytest.raises(ClusterError) as exc:
        cj._submit_now(_FakeCluster([None], err), 5)
    assert exc.value.reason == "CLUSTER_SUBMIT_FAILED"
    assert str(exc.value).endswith("Batch job submission failed: Invalid account") and "/tmp" not in str(exc.value)
    with pytest.raises(ClusterError) as exc:
        cj._submit_now(_FakeCluster([None], TimeoutError()), 5)
    assert "within 5 s" in str(exc.value)
    with pytest.raises(ClusterError) as exc:
        cj._submit_now(_FakeCluster(["12", None]), 5)  # one submission failed in dask-jobqueue's background task
    assert "1 of 2" in str(exc.value)
    cj._submit_now(_FakeCluster(["12", "13"]), 5)


def test_batch_commands_are_bounded():
    with pytest.raises(ClusterError) as exc:
        cj._run_batch_command(["petcohort-no-such-sbatch"], 5)
    assert exc.value.reason == "CLUSTER_SUBMIT_FAILED" and "not on PATH" in str(exc.value)
    with pytest.raises(ClusterError) as exc:
        cj._run_batch_command(["sleep", "30"], 0.2)
    assert exc.value.reason == "CLUSTER_SUBMIT_FAILED" and "0.2 s" in str(exc.value)


def test_first_worker_wait_ends_on_a_blocked_job_or_the_deadline(monkeypatch):
    spec = cl.parse_cluster_config({"kind": "slurm", "start_timeout_s": 0.05}).spec
    monkeypatch.setattr(cj, "_blocked_jobs", lambda kind, ids, timeout_s: f"blocked {ids}")
    with pytest.raises(ClusterError) as exc:
        cj._wait_first_worker("slurm", _FakeCluster(["3"]), _NoWorkers(), spec)
    assert exc.value.reason == "CLUSTER_JOB_BLOCKED" and "['3']" in str(exc.value)
    monkeypatch.setattr(cj, "_blocked_jobs", lambda kind, ids, timeout_s: None)
    with pytest.raises(ClusterError) as exc:
        cj._wait_first_worker("slurm", _FakeCluster(["3"]), _NoWorkers(), spec)
    assert exc.value.reason == "CLUSTER_NO_WORKERS" and "0.05 s" in str(exc.value)
