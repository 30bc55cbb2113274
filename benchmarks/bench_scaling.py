"""Cohort engine at scale: strong scaling, worker memory, scheduler overhead, cost per study.

Run: ``python benchmarks/bench_scaling.py`` (about 1-3 min on 2 cores;
``--sizes 10,100`` for a quicker pass).

1. Strong scaling: the same study-stages (``--force``) on a small synthetic
   cohort with 1 and then 2 worker processes; efficiency = t1 / (2 * t2).
   Work: the registered ``organs``, ``threshold`` and ``quantify`` stages
   when they exist, else this file's ``bench_peak`` stage (threshold,
   scipy labelling and a SULpeak-like sphere mean per lesion); the output
   says which.
2. Worker memory: peak RSS growth of each worker during the 2-worker run
   (peak RSS, reset just before the run through ``/proc/self/clear_refs``,
   minus RSS before; warm workers: each imported the stages and ran them once
   on the smallest study, uncommitted) relative to the bytes of the largest
   study's ``pet`` + ``ct`` and of all its arrays after the run (adult-size
   phantoms by default, as in the demo); then the same over one more forced
   run, once the heap the first grew is there to reuse (the workers keep
   freed memory up to ``engine.allocator.MALLOC_BYTES``).
3. Scheduler overhead: 1 - (sum of task seconds in the records) / (wall x
   workers) for the 2-worker run.
4. Cost per study at 10, 100, 1000 studies of tiny (4 x 8 x 8) volumes and a
   trivial stage: store writing (add_study + write_arrays), run planning
   (graph construction and input hashing), the manifest (``stage_records``)
   and a whole run on 2 workers.
"""
from __future__ import annotations

import argparse
import logging
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi
from _harness import report

from petcohort.pipelines.config import RunConfig
from petcohort.pipelines.run import plan_run, run_cohort
from petcohort.pipelines.stages import STAGES, StageContext, StageOutput, load_stages, register_stage
from petcohort.storage.store import CohortStore

REAL = ["organs", "threshold", "quantify"]


def bench_peak(ctx: StageContext) -> StageOutput:
    """Fallback work: lesions above SUV 2.5, and per lesion the max of a ~1 ml sphere mean."""
    pet = ctx.store.read_array(ctx.key, "pet")
    labels, n = ndi.label(pet >= 2.5, structure=np.ones((3, 3, 3)))
    sz, sy, sx = ctx.spacing
    r = 6.2035
    zz, yy, xx = np.ogrid[-3:4, -3:4, -3:4]
    ball = ((zz * sz) ** 2 + (yy * sy) ** 2 + (xx * sx) ** 2) <= r * r
    mean = ndi.correlate(pet.astype(np.float64), ball / ball.sum(), mode="constant")
    peaks = ndi.maximum(mean, labels, np.arange(1, n + 1)) if n else []
    return StageOutput(summary={"lesions": int(n), "peak": float(np.max(peaks)) if n else None})


def bench_tiny(ctx: StageContext) -> StageOutput:
    """Trivial stage: the per-task cost of the engine itself."""
    return StageOutput(summary={"max": float(ctx.store.read_array(ctx.key, "pet").max())})


def _cluster(n: int):
    """The engine's own local cluster (``engine.cluster.connect``), as ``petcohort run`` starts it."""
    from petcohort.engine.cluster import connect
    from petcohort.engine.cluster_config import parse_cluster_config

    return connect(parse_cluster_config({"kind": "local", "n_workers": n, "threads_per_worker": 1,
                                         "memory_limit": None, "dashboard_address": None},
                                        source="bench_scaling"))


def _rss() -> dict:
    """This process's RSS now and its peak RSS (VmHWM) since the last :func:`_reset_peak`."""
    import psutil

    peak = None
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            peak = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
    except (OSError, StopIteration):  # not Linux: the lifetime peak instead
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"rss": psutil.Process().memory_info().rss, "maxrss": peak}


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _run_uncommitted(url: str, key: str, names: list[str]) -> None:
    """Run ``names`` on study ``key`` in this process without committing anything."""
    load_stages()
    store = CohortStore.open(url, mode="r")
    attrs = store.study_attrs(key)
    for name in names:
        if STAGES[name].applies(attrs):
            STAGES[name].fn(StageContext(store, key, attrs, RunConfig(), None))


def _warm(client, names: list[str], url: str, key: str) -> None:
    """Every worker imports the stage modules and runs the stages once on study ``key``, uncommitted.

    Stages import some libraries on first use and a new process's heap starts
    empty; both are one-time costs of a worker, not of the studies it then
    processes, so the memory figures below start from warm workers.
    """
    client.run(load_stages)
    client.run(_run_uncommitted, url, key, names)


def strong_scaling(tmp: Path, patients: int, fov_scale: float) -> None:
    from petcohort.pipelines.synthetic import synthesize

    load_stages()
    if all(s in STAGES for s in REAL):
        names, work = REAL, "registered stages organs+threshold+quantify"
    else:
        register_stage("bench_peak")(bench_peak)
        names, work = ["bench_peak"], "fallback bench_peak stage (quantify stage not registered)"
    url = str(tmp / "cohort")
    synthesize(url, patients=patients, sites=1, seed=0, fov_scale=fov_scale)
    store = CohortStore.open(url, mode="r")
    # the peak comes from the largest study (pseudonymous keys sort in no particular order)
    sizes = {k: sum(store.read_array(k, a).nbytes for a in ("pet", "ct") if store.has_array(k, a))
             for k in store.study_keys()}
    key = max(sizes, key=sizes.get)
    smallest = min(sizes, key=sizes.get)
    study_bytes = sizes[key]
    times, mem, busy, steady = {}, {}, {}, {}
    for n in (1, 2):
        session = _cluster(n)
        client = session.client
        try:
            _warm(client, names, url, smallest)
            run_cohort(url, stages=names, client=client)  # untimed: fills caches, first commits
            reset = all(client.run(_reset_peak).values())
            before = client.run(_rss)
            t0 = time.perf_counter()
            s = run_cohort(url, stages=names, client=client, force=True)
            times[n] = time.perf_counter() - t0
            after = client.run(_rss)
            mem[n] = {w: after[w]["maxrss"] - before[w]["rss"] for w in after}
            if not reset:
                print("note: peak RSS could not be reset (not Linux): growth includes earlier peaks")
            recs = CohortStore.open(url, mode="r").stage_records()
            busy[n] = sum(r["seconds"] or 0.0 for r in recs.values() if r.get("run") == s.token)
            if n == 2:  # once more: the heap the first pass grew is reused (engine/allocator.py keeps it)
                client.run(_reset_peak)
                again = client.run(_rss)
                run_cohort(url, stages=names, client=client, force=True)
                steady = {w: v["maxrss"] - again[w]["rss"] for w, v in client.run(_rss).items()}
            if s.failed:
                print(f"note: {len(s.failed)} study-stages failed: {sorted(set(r for *_, r in s.failed))}")
        finally:
            session.close()
    t1, t2 = times[1], times[2]
    report("scaling_strong_1v2_workers", "2 workers", t2, "1 worker", t1,
           {"efficiency": t1 / (2 * t2), "work": work, "stages": names, "studies": len(store.study_keys()),
            "study_bytes_pet_ct": study_bytes})
    peaks = list(mem[2].values())
    done = CohortStore.open(url, mode="r")
    all_bytes = sum(done.read_array(key, a).nbytes for a in done.array_names(key))
    print(f"work: {work}")
    print(f"per-worker peak RSS growth over all of the largest study's arrays after the run "
          f"({all_bytes / 2**20:.1f} MiB): {[round(p / all_bytes, 2) for p in peaks]}")
    print(f"per-worker peak RSS growth: {[f'{p / 2**20:.0f} MiB' for p in peaks]} = "
          f"{[round(p / study_bytes, 2) for p in peaks]} x the largest study's pet+ct ({study_bytes / 2**20:.1f} MiB)")
    print(f"the same, a second forced run (heap reused): "
          f"{[round(p / study_bytes, 2) for p in steady.values()]} x pet+ct")
    report("scaling_scheduler_overhead", "wall x 2 workers", t2 * 2, "sum of task seconds", busy[2],
           {"overhead_share": 1 - busy[2] / (t2 * 2), "worker_peak_rss_growth_bytes": peaks,
            "worker_peak_over_study_bytes": [p / study_bytes for p in peaks],
            "worker_peak_over_study_bytes_second_run": [p / study_bytes for p in steady.values()],
            "worker_peak_over_all_study_arrays": [p / all_bytes for p in peaks], "study_all_arrays_bytes": all_bytes})


def per_study_costs(tmp: Path, sizes: list[int]) -> None:
    register_stage("bench_tiny")(bench_tiny)
    session = _cluster(2)
    client = session.client
    costs: dict[int, dict[str, float]] = {}
    try:
        for n in sizes:
            url = str(tmp / f"tiny{n}")
            rng = np.random.default_rng(n)
            t0 = time.perf_counter()
            store = CohortStore.create(url)
            for i in range(n):
                patient = f"P-{i // 2:010x}"
                key = f"{patient}-T{i % 2}"
                store.add_study(key, {"patient": patient, "timepoint": i % 2, "spacing": [4.0, 4.0, 4.0]})
                store.write_arrays(key, {"pet": rng.random((4, 8, 8), dtype=np.float32)})
            t_store = time.perf_counter() - t0
            t0 = time.perf_counter()
            plan = plan_run(store, dict(STAGES), ["bench_tiny"], config=RunConfig(), force=False, token="bench")
            t_plan = time.perf_counter() - t0
            assert len(plan.jobs) == n
            t0 = time.perf_counter()
            s = run_cohort(url, stages=["bench_tiny"], client=client)
            t_run = time.perf_counter() - t0
            assert len(s.done) == n, s.failed[:3]
            t0 = time.perf_counter()
            recs = store.stage_records()
            t_manifest = time.perf_counter() - t0
            assert len(recs) == n
            costs[n] = {"store": t_store / n, "plan": t_plan / n, "manifest": t_manifest / n, "run": t_run / n}
            print(f"{n:5d} studies: per study store {costs[n]['store'] * 1e3:.2f} ms, plan "
                  f"{costs[n]['plan'] * 1e3:.2f} ms, manifest {costs[n]['manifest'] * 1e3:.3f} ms, "
                  f"run {costs[n]['run'] * 1e3:.2f} ms")
            shutil.rmtree(url, ignore_errors=True)
    finally:
        session.close()
    lo, hi = min(sizes), max(sizes)
    for what in ("store", "plan", "manifest", "run"):
        report(f"scaling_per_study_{what}", f"{hi} studies (s/study)", costs[hi][what],
               f"{lo} studies (s/study)", costs[lo][what], {"per_study_s": {n: c[what] for n, c in costs.items()}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=3, help="synthetic patients for strong scaling")
    parser.add_argument("--fov-scale", type=float, default=1.0,
                        help="phantom body scale for strong scaling (1 = adult whole body, the demo's size)")
    parser.add_argument("--sizes", default="10,100,1000", help="study counts for the per-study costs")
    parser.add_argument("--skip-strong", action="store_true", help="only the per-study costs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="bench_scaling_"))
    try:
        if not args.skip_strong:
            strong_scaling(tmp, args.patients, args.fov_scale)
        per_study_costs(tmp, [int(s) for s in args.sizes.split(",")])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
