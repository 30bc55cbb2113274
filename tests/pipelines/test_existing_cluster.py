"""A real multi-process cluster: `dask scheduler` + 2 `dask worker` subprocesses on 127.0.0.1,
reached through a cluster.yaml of kind ``existing``; results must equal a ``local`` run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import run_test_stages as rts
from petcohort.pipelines.run import run_cohort

HERE = Path(__file__).resolve().parent
DASK = Path(sys.executable).parent / "dask"


@pytest.fixture(autouse=True)
def stages():
    with rts.registered():
        yield


def _wait(pred, timeout: float, what: str) -> None:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def scheduler_file(tmp_path):
    if not DASK.exists():
        pytest.skip(f"no dask executable at {DASK}")
    sched = tmp_path / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    procs = []

    def spawn(*args: str) -> None:
        procs.append(subprocess.Popen([str(DASK), *args], env=env, start_new_session=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    try:
        spawn("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file", str(sched))
        _wait(sched.exists, 30, "the scheduler file")
        for _ in range(2):
            spawn("worker", "--scheduler-file", str(sched), "--nthreads", "1", "--host", "127.0.0.1",
                  "--no-dashboard", "--nworkers", "1")
        from distributed import Client

        with Client(scheduler_file=str(sched), timeout=30, set_as_default=False) as c:
            c.wait_for_workers(2, timeout=60)
        yield sched
    finally:
        for p in reversed(procs):  # workers first, then the scheduler
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=5)


def test_existing_cluster_matches_local(tmp_path, scheduler_file):
    address = json.loads(scheduler_file.read_text())["address"]
    assert address.startswith("tcp://127.0.0.1:")
    for i, text in enumerate((f"kind: existing\nscheduler_file: {scheduler_file}\ntimeout_s: 10\n",
                              f"kind: existing\naddress: {address}\ntimeout_s: 10\n")):
        cfg = tmp_path / f"existing{i}.yaml"
        cfg.write_text(text)
        store = rts.make_cohort(tmp_path / f"store{i}", bad=("P-0000000001-T0",))
        s = run_cohort(store.url, cluster_file=cfg, stages=list(rts.NAMES))
        assert len(s.done) == 25 and len(s.failed) == 8
        workers = {r["worker"] for r in store.stage_records().values()}
        assert len(workers) == 2  # both worker processes took part
        local_cfg = tmp_path / "local.yaml"
        local_cfg.write_text("kind: local\nn_workers: 1\nprocesses: false\ndashboard_address: null\n")
        ref = rts.make_cohort(tmp_path / f"ref{i}", bad=("P-0000000001-T0",))
        run_cohort(ref.url, cluster_file=local_cfg, stages=list(rts.NAMES))
        assert rts.results(store) == rts.results(ref)
