"""Cohort engine at scale: strong scaling, worker memory, scheduler overhead, cost per study.

Run: ``python benchmarks/bench_scaling.py`` (about 2-4 min on 2 cores;
``--sizes 10,100`` for a quicker pass).

1. Strong scaling: the same study-stages (``--force``) on a small synthetic
   cohort with 1 and with 2 worker processes, in ``--rounds`` rounds that
   alternate the order (1 then 2, 2 then 1, ...) with both clusters up, so
   that a shared machine's drift falls on both sides; efficiency = t1 /
   (2 * t2) per round, and its median. Beside it, the machine's own ceiling:
   the same work without Dask in one process alone, then in two processes
   at once (each on its own copy of the store); alone / together is the most
   any engine can reach on these cores.
   Work: the registered ``organs``, ``threshold`` and ``quantify`` stages
   when they exist, else this file's ``bench_peak`` stage (threshold,
   scipy labelling and a SULpeak-like sphere mean per lesion); the output
   says which.
2. Worker memory: peak RSS growth of each worker during the first 2-worker run
   (peak RSS, reset just before the run through ``/proc/self/clear_refs``,
   minus RSS before; warm workers: each imported the stages and ran them
   once, with the engine's allocator settings, on the smallest study,
   uncommitted) relative to the bytes of the largest study's ``pet`` +
   ``ct`` and of all its arrays after the run (adult-size phantoms by
   default, as in the demo); then the same over one more forced run, once
   the heap the first grew is there to reuse (the workers keep freed memory
   up to ``engine.allocator.MALLOC_BYTES``). Last, the whole heap a worker
   came to hold (glibc ``mallinfo2``: arena + mmapped, after every run,
   minus the same once the stages were imported, before any study): what
   the studies cost a worker, without the code that imports map.
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
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi
from _harness import report

from petcohort.engine.allocator import tune_malloc
from petcohort.pipelines.config import RunConfig
from petcohort.pipelines.run import plan_run, run_cohort
from petcohort.pipelines.run_task import execute_study_stage
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


def _heap() -> int | None:
    """Bytes glibc's malloc holds from the OS in this process (``mallinfo2``: arena + mmapped), None off glibc.

    Unlike RSS, this leaves out code and data that imports map: it is the heap
    the studies needed (in use, or freed and kept for reuse, engine/allocator.py).
    """
    import ctypes  # noqa: PLC0415

    class _MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                    "fsmblks", "uordblks", "fordblks", "keepcost")]
    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):  # not glibc, or glibc < 2.33
        return None
    fn.restype = _MallInfo2
    info = fn()
    return int(info.arena + info.hblkhd)


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _run_uncommitted(url: str, key: str, names: list[str]) -> None:
    """Run ``names`` on study ``key`` in this process without committing anything.

    With the allocator the engine's tasks run with (``execute_study_stage``
    calls ``tune_malloc`` first): a warm-up under Dask's untuned thresholds
    would mmap and unmap its arrays and leave the heap as cold as before.
    """
    tune_malloc()
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


def _bare(url: str, names: list[str], rounds: int) -> float:
    """Seconds per forced pass of ``names`` over every study, in this process, without Dask (best of ``rounds``)."""
    load_stages()
    store = CohortStore.open(url, mode="r+")
    best = float("inf")
    for r in range(rounds + 1):  # the first pass warms this process (imports, heap) and is not timed
        plan = plan_run(store, dict(STAGES), names, config=RunConfig(), force=True, token=f"bare{r}")
        t0 = time.perf_counter()
        for key in plan.graph.order:
            execute_study_stage(plan.jobs[key])
        if r:
            best = min(best, time.perf_counter() - t0)
    return best


def machine_ceiling(url: str, names: list[str], rounds: int) -> tuple[float, float]:
    """(one process alone, two at once) seconds of the same work, without Dask.

    Two processes doing the same numpy/zarr work on two cores contend for
    memory bandwidth and caches; their ratio is the most any engine can reach
    here, so it is printed beside the engine's efficiency. Each process has
    its own copy of the store.
    """
    import multiprocessing as mp  # noqa: PLC0415

    copy = f"{url}-copy"
    shutil.copytree(url, copy)
    ctx = mp.get_context("spawn")
    try:
        with ctx.Pool(1) as pool:
            alone = pool.apply(_bare, (url, names, rounds))
        with ctx.Pool(2) as pool:
            both = [pool.apply_async(_bare, (u, names, rounds)) for u in (url, copy)]
            together = max(r.get() for r in both)
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    return alone, together


def strong_scaling(tmp: Path, patients: int, fov_scale: float, rounds: int) -> None:
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
    times: dict[int, list[float]] = {1: [], 2: []}
    mem, steady, busy = {}, {}, 0.0
    sessions = {n: _cluster(n) for n in (1, 2)}
    try:
        sessions[2].client.run(load_stages)
        heap_imported = sessions[2].client.run(_heap)   # the workers' heap before any study
        for session in sessions.values():
            _warm(session.client, names, url, smallest)
        run_cohort(url, stages=names, client=sessions[1].client)  # untimed: fills caches, first commits
        # Rounds alternate 1 -> 2 and 2 -> 1 workers, both clusters up all along, so
        # that the drift of a shared machine falls on both sides of each ratio.
        for r in range(rounds):
            for n in (1, 2) if r % 2 == 0 else (2, 1):
                client = sessions[n].client
                first = n == 2 and not times[2]
                if first:  # worker memory: the first forced 2-worker pass
                    reset = all(client.run(_reset_peak).values())
                    before = client.run(_rss)
                t0 = time.perf_counter()
                s = run_cohort(url, stages=names, client=client, force=True)
                times[n].append(time.perf_counter() - t0)
                if s.failed:
                    print(f"note: {len(s.failed)} study-stages failed: {sorted(set(r for *_, r in s.failed))}")
                if first:
                    after = client.run(_rss)
                    mem = {w: after[w]["maxrss"] - before[w]["rss"] for w in after}
                    if not reset:
                        print("note: peak RSS could not be reset (not Linux): growth includes earlier peaks")
                    recs = CohortStore.open(url, mode="r").stage_records()
                    busy = sum(r["seconds"] or 0.0 for r in recs.values() if r.get("run") == s.token)
        client = sessions[2].client  # once more: the heap the first pass grew is reused (engine/allocator.py)
        client.run(_reset_peak)
        again = client.run(_rss)
        run_cohort(url, stages=names, client=client, force=True)
        steady = {w: v["maxrss"] - again[w]["rss"] for w, v in client.run(_rss).items()}
        heap_end = client.run(_heap)
    finally:
        for session in sessions.values():
            session.close()
    effs = [t1 / (2 * t2) for t1, t2 in zip(times[1], times[2])]
    t1, t2 = statistics.median(times[1]), statistics.median(times[2])
    alone, together = machine_ceiling(url, names, rounds=2)
    print(f"strong scaling, {rounds} alternating rounds: 1 worker {[round(t, 2) for t in times[1]]} s, "
          f"2 workers {[round(t, 2) for t in times[2]]} s; efficiency per round {[round(e, 2) for e in effs]}")
    print(f"the machine without Dask: the same work in one process {alone:.2f} s alone, {together:.2f} s with a "
          f"second process doing it too: ceiling {alone / together:.2f}")
    report("scaling_strong_1v2_workers", "2 workers (median)", t2, "1 worker (median)", t1,
           {"efficiency_median": statistics.median(effs), "efficiency_per_round": effs,
            "machine_ceiling": alone / together, "work": work, "stages": names,
            "studies": len(store.study_keys()), "study_bytes_pet_ct": study_bytes})
    peaks = list(mem.values())
    done = CohortStore.open(url, mode="r")
    all_bytes = sum(done.read_array(key, a).nbytes for a in done.array_names(key))
    print(f"work: {work}")
    print(f"per-worker peak RSS growth over all of the largest study's arrays after the run "
          f"({all_bytes / 2**20:.1f} MiB): {[round(p / all_bytes, 2) for p in peaks]}")
    print(f"per-worker peak RSS growth: {[f'{p / 2**20:.0f} MiB' for p in peaks]} = "
          f"{[round(p / study_bytes, 2) for p in peaks]} x the largest study's pet+ct ({study_bytes / 2**20:.1f} MiB)")
    print(f"the same, a second forced run (heap reused): "
          f"{[round(p / study_bytes, 2) for p in steady.values()]} x pet+ct")
    heap = [heap_end[w] - heap_imported[w] for w in heap_end
            if heap_end[w] is not None and heap_imported.get(w) is not None]
    if heap:
        print(f"per-worker heap (glibc arena + mmapped) after all runs, over the heap once the stages were imported: "
              f"{[f'{h / 2**20:.0f} MiB' for h in heap]} = {[round(h / study_bytes, 2) for h in heap]} x pet+ct")
    t_mem = times[2][0]
    report("scaling_scheduler_overhead", "wall x 2 workers", t_mem * 2, "sum of task seconds", busy,
           {"overhead_share": 1 - busy / (t_mem * 2), "worker_peak_rss_growth_bytes": peaks,
            "worker_peak_over_study_bytes": [p / study_bytes for p in peaks],
            "worker_peak_over_study_bytes_second_run": [p / study_bytes for p in steady.values()],
            "worker_heap_over_study_bytes": [h / study_bytes for h in heap],
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
    parser.add_argument("--rounds", type=int, default=3, help="alternating 1- and 2-worker rounds of strong scaling")
    parser.add_argument("--sizes", default="10,100,1000", help="study counts for the per-study costs")
    parser.add_argument("--skip-strong", action="store_true", help="only the per-study costs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="bench_scaling_"))
    try:
        if not args.skip_strong:
            strong_scaling(tmp, args.patients, args.fov_scale, args.rounds)
        per_study_costs(tmp, [int(s) for s in args.sizes.split(",")])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
