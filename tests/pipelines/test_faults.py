"""Fault tolerance with real processes: a worker SIGKILLed mid-run, the whole run SIGKILLed mid-run.

Each takes 10-20 s on 2 shared cores (marked slow).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import run_test_stages as rts
from petcohort.pipelines.config import RunConfig
from petcohort.pipelines.run import run_cohort

HERE = Path(__file__).resolve().parent
SLOW = RunConfig(extra={"sleep_s": 0.5})


@pytest.fixture(autouse=True)
def stages():
    with rts.registered():
        yield


def _clean_results(tmp_path, client) -> dict:
    ref = rts.make_cohort(tmp_path / "reference")
    run_cohort(ref.url, stages=rts.MAIN, client=client)
    return rts.results(ref)


def _wait_for_records(store, n: int, timeout: float = 60.0) -> None:
    t0 = time.monotonic()
    while len([r for r in store.stage_records().values() if r["status"] == "committed"]) < n:
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"fewer than {n} records after {timeout} s")
        time.sleep(0.05)


@pytest.mark.slow
def test_worker_sigkill_mid_run(tmp_path):
    from distributed import Client, LocalCluster

    store = rts.make_cohort(tmp_path / "store")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster, set_as_default=False) as client:
        expected = _clean_results(tmp_path, client)
        pids = client.run(os.getpid)
        outcome: dict = {}
        runner = threading.Thread(target=lambda: outcome.update(
            s=run_cohort(store.url, stages=rts.MAIN, client=client, config=SLOW)))
        runner.start()
        _wait_for_records(store, 1)
        victim = sorted(pids.values())[0]
        os.kill(victim, signal.SIGKILL)  # its nanny restarts it; Dask reschedules its task
        runner.join(timeout=90)
        assert not runner.is_alive()
        assert victim not in client.run(os.getpid).values()
    s = outcome["s"]
    assert s.failed == [] and len(s.done) == 15
    records = store.stage_records()
    assert len(records) == 15 and {r["run"] for r in records.values()} == {s.token}
    assert rts.results(store) == expected


_SCRIPT = """
import sys
sys.path.insert(0, {here!r})
import run_test_stages as rts
from petcohort.pipelines.config import RunConfig
from petcohort.pipelines.run import run_cohort

if __name__ == "__main__":
    rts.register_all()
    run_cohort({store!r}, cluster_file={cfg!r}, stages=rts.MAIN, config=RunConfig(extra={{"sleep_s": 0.4}}))
"""


@pytest.mark.slow
def test_whole_run_sigkill_then_resume(tmp_path):
    from distributed import Client, LocalCluster

    store = rts.make_cohort(tmp_path / "store")
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text("kind: local\nn_workers: 2\ndashboard_address: null\n")
    script = tmp_path / "run_it.py"
    script.write_text(textwrap.dedent(_SCRIPT.format(here=str(HERE), store=store.url, cfg=str(cfg))))
    proc = subprocess.Popen([sys.executable, str(script)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_records(store, 4)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its workers, mid-run
        proc.wait(timeout=30)
    before = {k: r for k, r in store.stage_records().items() if r["status"] == "committed"}
    assert 4 <= len(before) < 15
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster, set_as_default=False) as client:
        # the dead run's lock is stale (its pid is gone) and is taken over
        s = run_cohort(store.url, stages=rts.MAIN, client=client)
        expected = _clean_results(tmp_path, client)
    assert s.failed == []
    assert sorted(s.skipped) == sorted(before) and len(s.done) == 15 - len(before)
    after = store.stage_records()
    for k, r in before.items():
        assert after[k]["started"] == r["started"] and after[k]["run"] == r["run"]
    assert rts.results(store) == expected


@pytest.mark.slow
def test_task_that_kills_its_worker_is_recorded(tmp_path):
    """A study whose stage kills the worker every time ends as WORKER_LOST; the others complete."""
    import dask
    from distributed import Client, LocalCluster

    rts.register_die()
    bad = "P-0000000001-T0"
    store = rts.make_cohort(tmp_path / "store", bad=(bad,))
    # Dask retries a task whose worker died (allowed-failures, default 3: the
    # poison task kills 4 workers); tasks that merely shared a dying worker
    # are retried and complete.
    assert dask.config.get("distributed.scheduler.allowed-failures") == 3
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster, set_as_default=False) as client:
        s = run_cohort(store.url, stages=["t_die", "t_after_die"], client=client)
    assert sorted(s.failed) == [(bad, "t_after_die", "UPSTREAM_FAILED"), (bad, "t_die", "WORKER_LOST")]
    assert len(s.done) == 10
    assert store.stage_record(bad, "t_die")["reason"] == "WORKER_LOST"
    assert store.stage_record(bad, "t_after_die")["reason"] == "UPSTREAM_FAILED"
