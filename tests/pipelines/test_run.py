"""run_cohort on a tiny store with test-only stages, on a real 2-process LocalCluster."""
from __future__ import annotations

import logging
import re

import numpy as np
import pytest

import run_test_stages as rts
from petcohort.engine.errors import ConfigError, StoreError
from petcohort.engine.graph import build_graph, task_key
from petcohort.pipelines.config import RunConfig
from petcohort.pipelines.run import plan_run, run_cohort
from petcohort.pipelines.stages import STAGES
from petcohort.storage.store import CohortStore

BAD = "P-0000000001-T0"


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster, set_as_default=False) as c:
        yield c


@pytest.fixture(autouse=True)
def stages():
    with rts.registered():
        yield


@pytest.fixture
def store(tmp_path):
    return rts.make_cohort(tmp_path / "store", bad=(BAD,))


def test_first_run_commits_and_records_reasons(store, client):
    s = run_cohort(store.url, stages=list(rts.NAMES), client=client)
    recs = store.stage_records()
    # 6 studies x 5 "all" stages + 3 follow-ups x t_delta
    assert len(recs) == 33
    failed = {(st, stage): reason for st, stage, reason in s.failed}
    assert failed[(BAD, "t_fail")] == "BAD_VALUE"
    assert failed[(BAD, "t_after_fail")] == "UPSTREAM_FAILED"
    assert all(failed[(k, "t_crash")] == "INTERNAL_ERROR" for k in store.study_keys())
    assert recs[(BAD, "t_crash")]["message"] == "RuntimeError: boom"
    assert len(failed) == 8 and len(s.done) == 25 and not s.skipped
    assert s.per_stage["t_peak"] == {"done": 6, "skipped": 0, "failed": 0}
    # the values are the real reductions of pet
    pet = store.read_array("P-0000000002-T1", "pet")
    rec = recs[("P-0000000002-T1", "t_peak")]
    assert rec["summary"]["max"] == pytest.approx(float(pet.max()))
    np.testing.assert_array_equal(store.read_array("P-0000000002-T1", "derived/t_peak"),
                                  (pet >= 0.41 * pet.max()).astype(np.uint8))
    base = float(store.read_array("P-0000000002-T0", "pet").max())
    assert recs[("P-0000000002-T1", "t_delta")]["summary"]["delta_pct"] == pytest.approx(
        100 * (float(pet.max()) - base) / base)
    for r in recs.values():
        assert r["run"] == s.token and r["code_version"] and r["config_hash"] and r["input_hash"]
        assert r["started"] and r["worker"] is not None


def test_rerun_skips_committed_and_retries_failed(store, client):
    first = run_cohort(store.url, stages=rts.MAIN, client=client)
    before = store.stage_records()
    again = run_cohort(store.url, stages=rts.MAIN, client=client)
    assert again.done == [] and again.failed == []
    assert sorted(again.skipped) == sorted(first.done)
    assert store.stage_records() == before  # nothing rewritten, not even "started"
    forced = run_cohort(store.url, stages=["t_peak"], force=True, client=client)
    assert len(forced.done) == 6
    # t_peak was redone, so its dependants are out of date and are redone next time
    after = run_cohort(store.url, stages=rts.MAIN, client=client)
    assert {s for _, s in after.done} == {"t_count", "t_delta"} and len(after.done) == 9
    assert rts.results(store) == rts.results_of(before)


def test_config_change_redoes_only_dependent_stages(store, client):
    run_cohort(store.url, stages=rts.MAIN + ["t_fail"], client=client)
    s = run_cohort(store.url, stages=rts.MAIN + ["t_fail"], client=client,
                   config=RunConfig(threshold_relative=0.6))
    assert {st for _, st in s.done} == {"t_peak", "t_count", "t_delta"}
    assert {st for _, st in s.skipped} == {"t_fail"} and len(s.skipped) == 5  # BAD failed: retried
    pet = store.read_array("P-0000000000-T0", "pet")
    np.testing.assert_array_equal(store.read_array("P-0000000000-T0", "derived/t_peak"),
                                  (pet >= 0.6 * pet.max()).astype(np.uint8))


def test_changed_study_input_redoes_that_study_only(store, client):
    run_cohort(store.url, stages=["t_peak"], client=client)
    store.write_arrays("P-0000000000-T1", {"ct": np.zeros((6, 12, 12), np.int16)})
    s = run_cohort(store.url, stages=["t_peak"], client=client)
    assert s.done == [("P-0000000000-T1", "t_peak")] and len(s.skipped) == 5


def test_locked_store_is_refused(store, client):
    with store.lock("someone else"):
        with pytest.raises(StoreError) as exc:
            run_cohort(store.url, stages=["t_peak"], client=client)
    assert exc.value.reason == "STORE_LOCKED"
    assert store.stage_records() == {}


def test_unknown_stage_is_refused(store, client):
    with pytest.raises(ConfigError) as exc:
        run_cohort(store.url, stages=["t_peak", "no_such_stage"], client=client)
    assert exc.value.reason == "UNKNOWN_STAGE" and "no_such_stage" in str(exc.value)


def test_followup_without_baseline(tmp_path, client):
    store = CohortStore.create(str(tmp_path / "s"))
    store.add_study("P-00000000aa-T1", {"patient": "P-00000000aa", "timepoint": 1, "spacing": [1, 1, 1]})
    store.write_arrays("P-00000000aa-T1", {"pet": np.ones((4, 4, 4), np.float32)})
    s = run_cohort(store.url, stages=rts.MAIN, client=client)
    assert ("P-00000000aa-T1", "t_delta", "NO_BASELINE") in s.failed
    assert ("P-00000000aa-T1", "t_peak") in s.done


def test_failed_ingest_placeholder_is_not_analysed(tmp_path, client):
    store = CohortStore.create(str(tmp_path / "s"))
    store.add_study("P-00000000bb-T0", {"patient": "P-00000000bb", "timepoint": 0, "ingest_failed": True})
    store.add_study("P-00000000bb-T1", {"patient": "P-00000000bb", "timepoint": 1, "spacing": [1, 1, 1]})
    store.write_arrays("P-00000000bb-T1", {"pet": np.ones((4, 4, 4), np.float32)})
    s = run_cohort(store.url, stages=rts.MAIN, client=client)
    assert not any(study == "P-00000000bb-T0" for study, _ in s.done)
    assert not any(study == "P-00000000bb-T0" for study, *_ in s.failed)
    assert ("P-00000000bb-T1", "t_delta", "NO_BASELINE") in s.failed


def test_plan_keys_are_pseudonymous_and_dependencies_right(store):
    plan = plan_run(store, dict(STAGES), rts.MAIN, config=RunConfig(), force=False, token="abcd1234")
    assert len(plan.jobs) == 6 + 6 + 3
    for key, t in plan.graph.tasks.items():
        assert re.fullmatch(r"t_[a-z_]+-P-[0-9a-f]{10}-T[01]-abcd1234", key)
        assert key == task_key(t.stage, t.study, "abcd1234")
    t = plan.graph.tasks["t_delta-P-0000000002-T1-abcd1234"]
    assert set(t.deps) == {"t_peak-P-0000000002-T1-abcd1234", "t_peak-P-0000000002-T0-abcd1234"}
    assert plan.graph.downstream("t_peak-P-0000000002-T0-abcd1234") == {
        "t_count-P-0000000002-T0-abcd1234", "t_delta-P-0000000002-T1-abcd1234"}


def test_graph_gpu_annotation_and_skips():
    from petcohort.pipelines.stages import Stage

    reg = {"a": Stage("a", rts.t_peak, gpu=True), "b": Stage("b", rts.t_count, requires=("a",))}
    studies = {"P-0000000000-T0": {"patient": "P-0000000000", "timepoint": 0}}
    g = build_graph(reg, studies, selected=["b", "a"], token="t")
    assert g.stages == ("a", "b")
    assert g.tasks["a-P-0000000000-T0-t"].resources == {"GPU": 1}
    assert g.tasks["b-P-0000000000-T0-t"].deps == ("a-P-0000000000-T0-t",)
    g2 = build_graph(reg, studies, selected=["a", "b"], token="t", skip=[("P-0000000000-T0", "a")])
    assert list(g2.tasks) == ["b-P-0000000000-T0-t"] and g2.tasks["b-P-0000000000-T0-t"].deps == ()
    with pytest.raises(StoreError):
        task_key("a", "Jane Doe", "t")


def test_cluster_file_and_plain_progress(store, tmp_path, caplog):
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text("kind: local\nn_workers: 1\nprocesses: false\ndashboard_address: null\n")
    with caplog.at_level(logging.INFO, logger="petcohort.pipelines"):
        s = run_cohort(store.url, cluster_file=cfg, stages=["t_peak"])
    assert len(s.done) == 6
    text = caplog.text
    assert "stage t_peak: 6/6 done, 0 failed" in text
    assert re.search(r"stage t_peak\s+done 6, skipped 0, failed 0", text)


class _Tty:
    """A text stream that says it is a terminal (rich then draws bars and tables)."""

    def __init__(self):
        import io

        self.buf = io.StringIO()

    def isatty(self):
        return True

    def write(self, s):
        return self.buf.write(s)

    def flush(self):
        pass


def test_progress_and_summary_on_a_terminal():
    from petcohort.pipelines.progress import RunProgress, render_summary

    tty = _Tty()
    with RunProgress({"t_peak": 2, "t_count": 0}, stream=tty) as p:
        assert p._rich is not None and list(p.totals) == ["t_peak"]
        p.advance("t_peak")
        p.advance("t_peak", failed=True)
    assert p.done == {"t_peak": 2} and p.failed == {"t_peak": 1}
    render_summary({"t_peak": {"done": 1, "skipped": 3, "failed": 1}}, [("P-0000000000-T0", "t_peak", "X_Y")],
                   1.5, stream=tty)
    out = tty.buf.getvalue()
    assert "t_peak" in out and "X_Y" in out and "P-0000000000-T0" in out


def test_missing_upstream_record_is_reported(store, client):
    s = run_cohort(store.url, stages=["t_count"], client=client)
    assert {r for *_, r in s.failed} == {"UPSTREAM_MISSING"} and len(s.failed) == 6
    assert "t_peak" in store.stage_record("P-0000000000-T0", "t_count")["message"]


def test_task_retry_is_idempotent(store):
    """A task rerun by Dask after its worker died past the commit point does not run again."""
    from petcohort.pipelines.run_task import execute_study_stage

    plan = plan_run(store, dict(STAGES), ["t_peak"], config=RunConfig(), force=False, token="tok1")
    job = next(iter(plan.jobs.values()))
    first = execute_study_stage(job)
    rec = store.stage_record(job.study, "t_peak")
    second = execute_study_stage(job)
    assert first == second and second["status"] == "committed"
    assert store.stage_record(job.study, "t_peak") == rec  # not rewritten
    other = plan_run(store, dict(STAGES), ["t_peak"], config=RunConfig(), force=True, token="tok2")
    execute_study_stage(other.jobs[task_key("t_peak", job.study, "tok2")])
    assert store.stage_record(job.study, "t_peak")["run"] == "tok2"


def test_run_status_json_for_the_dashboard(store, client):
    s = run_cohort(store.url, stages=["t_peak"], client=client)
    status = store.read_json("run")
    assert status["token"] == s.token and status["status"] == "finished"
    assert status["per_stage"] == {"t_peak": {"done": 6, "skipped": 0, "failed": 0}} and status["to_run"] == 6


def test_gpu_stage_runs_with_and_without_gpu_workers(store, client, tmp_path):
    from petcohort.pipelines import stages as stages_mod
    from petcohort.pipelines.stages import register_stage

    register_stage("t_gpu", gpu=True)(rts.t_peak)
    try:
        # no worker advertises GPU: the annotation is dropped instead of waiting forever
        s = run_cohort(store.url, stages=["t_gpu"], client=client)
        assert len(s.done) == 6
        cfg = tmp_path / "gpu.yaml"
        cfg.write_text("kind: local\nn_workers: 1\nprocesses: false\ndashboard_address: null\n"
                       "resources: {GPU: 1}\n")
        s = run_cohort(store.url, stages=["t_gpu"], cluster_file=cfg, force=True)
        assert len(s.done) == 6
    finally:
        stages_mod.STAGES.pop("t_gpu", None)
