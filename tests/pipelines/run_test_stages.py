"""Test-only stages and a tiny cohort for the runner tests (test_run*, test_faults, test_existing_cluster).

The stages do real (small) work on ``pet`` so that results can be compared
between runs and clusters. They are registered and removed by
:func:`registered` so that no other test sees them. Dask pickles the stage
functions by reference, so worker processes must be able to import this
module: LocalCluster workers inherit ``sys.path``; ``dask worker`` processes
started by a test get this folder on ``PYTHONPATH``.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np

from petcohort.engine.errors import InputError
from petcohort.pipelines import stages as stages_mod
from petcohort.pipelines.stages import StageContext, StageOutput, register_stage

NAMES = ("t_peak", "t_count", "t_delta", "t_fail", "t_after_fail", "t_crash")
MAIN = ["t_peak", "t_count", "t_delta"]


def _sleep(ctx: StageContext) -> None:
    delay = float(ctx.config.extra.get("sleep_s", 0.0))
    if delay:
        time.sleep(delay)


def t_peak(ctx: StageContext) -> StageOutput:
    """Max/sum of pet and a mask of voxels at or above ``threshold_relative`` x max."""
    _sleep(ctx)
    pet = ctx.store.read_array(ctx.key, "pet")
    top = float(pet.max())
    mask = (pet >= ctx.config.threshold_relative * top).astype(np.uint8)
    return StageOutput(arrays={"derived/t_peak": mask},
                       summary={"max": top, "sum": float(pet.sum(dtype=np.float64)), "n_hot": int(mask.sum())})


def t_count(ctx: StageContext) -> StageOutput:
    """Mean SUV inside the t_peak mask (reads the upstream array back)."""
    _sleep(ctx)
    pet = ctx.store.read_array(ctx.key, "pet")
    mask = ctx.store.read_array(ctx.key, "derived/t_peak").astype(bool)
    return StageOutput(summary={"hot_mean": float(pet[mask].mean(dtype=np.float64))})


def t_delta(ctx: StageContext) -> StageOutput:
    """Follow-up max relative to the baseline max (percent)."""
    _sleep(ctx)
    here = float(ctx.store.read_array(ctx.key, "pet").max())
    base = float(ctx.store.read_array(ctx.baseline_key, "pet").max())
    return StageOutput(arrays={"derived/t_delta": np.array([here - base], dtype=np.float64)},
                       summary={"delta_pct": 100.0 * (here - base) / base})


def t_fail(ctx: StageContext) -> StageOutput:
    """Refuses studies flagged ``bad`` with a reason code."""
    if ctx.attrs.get("bad"):
        raise InputError("BAD_VALUE", f"study {ctx.key} is flagged bad")
    return StageOutput(summary={"ok": True})


def t_after_fail(ctx: StageContext) -> StageOutput:
    return StageOutput(summary={"ran": True})


def t_crash(ctx: StageContext) -> StageOutput:
    raise RuntimeError("boom")


def t_die(ctx: StageContext) -> StageOutput:
    """Kills its worker process on studies flagged ``bad`` (a segfault or the OOM killer)."""
    if ctx.attrs.get("bad"):
        import os

        os._exit(3)
    return StageOutput(summary={"alive": True})


def register_die() -> None:
    register_stage("t_die")(t_die)
    register_stage("t_after_die", requires=("t_die",))(t_after_fail)


def register_all() -> None:
    register_stage("t_peak", params=("threshold_relative",))(t_peak)
    register_stage("t_count", requires=("t_peak",))(t_count)
    register_stage("t_delta", requires=("t_peak",), needs_baseline=("t_peak",), applies_to="followup")(t_delta)
    register_stage("t_fail")(t_fail)
    register_stage("t_after_fail", requires=("t_fail",))(t_after_fail)
    register_stage("t_crash")(t_crash)


def unregister_all() -> None:
    for name in (*NAMES, "t_die", "t_after_die"):
        stages_mod.STAGES.pop(name, None)


@contextlib.contextmanager
def registered():
    register_all()
    try:
        yield
    finally:
        unregister_all()


def make_cohort(path: Path | str, *, patients: int = 3, timepoints: int = 2, shape=(6, 12, 12), seed: int = 0,
                bad: tuple[str, ...] = ()):
    """A tiny store: ``patients`` x ``timepoints`` studies with a random ``pet`` (SUV, float32)."""
    from petcohort.storage.store import CohortStore

    store = CohortStore.create(str(path))
    rng = np.random.default_rng(seed)
    for p in range(patients):
        patient = f"P-{p:010x}"
        for t in range(timepoints):
            key = f"{patient}-T{t}"
            store.add_study(key, {"patient": patient, "study": key, "timepoint": t,
                                  "days_since_baseline": 60 * t, "spacing": [3.0, 4.0, 4.0],
                                  "origin": [0.0, 0.0, 0.0], "bad": key in bad})
            pet = rng.gamma(2.0, 0.5, size=shape).astype(np.float32)
            store.write_arrays(key, {"pet": pet})
    return store


def results(store) -> dict:
    """(study, stage) -> (status, reason, summary, arrays) of every record: what runs must agree on."""
    return results_of(store.stage_records())


def results_of(records: dict) -> dict:
    return {k: (r["status"], r.get("reason"), r.get("summary"), r.get("arrays")) for k, r in records.items()}


def arrays(store, name: str) -> dict:
    return {k: store.read_array(k, name) for k in store.study_keys() if store.has_array(k, name)}
