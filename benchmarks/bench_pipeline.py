"""Analysis stages on a fixed synthetic cohort: CPU per stage and study, wall, system share, faults, memory.

Run: ``python benchmarks/bench_pipeline.py`` (about 4-6 min on 2 shared cores;
``--patients 2 --reg-pairs 1 --skip-malloc`` for a quicker pass).

Cohort: ``pipelines.synthetic.synthesize(patients=4, sites=1, seed=0)``,
adult-size phantoms as in the demo (4 patients = 11 studies, 7 follow-ups).
Every run uses the engine's own local cluster (2 worker processes of one
thread, as ``petcohort run`` starts it on this 2-core machine); an untimed
run of all analysis stages comes first (imports, caches, first commits).

1. Per stage: ``run_cohort(stages=[stage], force=True)`` alone; the workers'
   user + system CPU (``getrusage`` in each worker), minor page faults and
   study-stages done give CPU seconds per study-stage; the largest worker
   peak RSS growth of that run over the largest study's pet + ct bytes says
   which stage sets the pipeline's peak memory.
2. Full analysis pipeline (every stage but the nnU-Net ones) vs the light
   stages (organs, threshold, quantify), both ``--force`` on the same cohort
   in the same session: per-study wall and CPU, the ratio, system-time share
   and each worker's peak RSS growth (``/proc/self/clear_refs`` reset,
   ``VmHWM``) over the largest study's pet + ct bytes.
3. Allocator: the full pipeline on the engine's workers (every study-stage
   calls ``engine.allocator.tune_malloc``: glibc trim/mmap thresholds of
   256 MiB) vs the same workers with ``PETCOHORT_MALLOC_TUNE=0`` (Dask's
   ``MALLOC_TRIM_THRESHOLD_=65536`` alone, which freezes the mmap threshold at
   128 KiB: every large array mmapped and faulted in again): minor page
   faults, system share, CPU and peak RSS, same run.
4. Registration: ``register_rigid`` (the stage's call) vs stock
   ``ants.registration(type_of_transform="Rigid")`` (ANTsPy defaults) on the
   same baseline/follow-up pairs, one ITK thread for both, in this process;
   plus the previous full-resolution schedule (``schedule="full"``) and how
   far the current transform is from it.
"""
from __future__ import annotations

import argparse
import logging
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _harness import report
from bench_scaling import _reset_peak, _rss

from petcohort.engine.allocator import MALLOC_BYTES
from petcohort.pipelines.run import run_cohort
from petcohort.pipelines.stages import MODEL_STAGES, load_stages, stage_order
from petcohort.storage.store import CohortStore

LIGHT = ["organs", "threshold", "quantify"]


def _usage() -> dict[str, float]:
    """This process's CPU seconds (user, system) and minor page faults so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"user": ru.ru_utime, "sys": ru.ru_stime, "minflt": float(ru.ru_minflt)}


def _cluster(n: int, *, malloc_untuned: bool = False):
    """The engine's local cluster (``engine.cluster.connect``), as ``petcohort run`` starts it.

    ``malloc_untuned``: its workers get ``PETCOHORT_MALLOC_TUNE=0`` (the allocator
    baseline of section 3: Dask's worker environment alone).
    """
    import dask

    from petcohort.engine.cluster import connect
    from petcohort.engine.cluster_config import parse_cluster_config

    config = parse_cluster_config({"kind": "local", "n_workers": n, "threads_per_worker": 1,
                                   "memory_limit": None, "dashboard_address": None}, source="bench_pipeline")
    pre = "distributed.nanny.pre-spawn-environ."
    with dask.config.set({pre + "PETCOHORT_MALLOC_TUNE": "0"} if malloc_untuned else {}):
        return connect(config)


def _workers_usage(client) -> dict[str, float]:
    per = client.run(_usage)
    return {k: sum(u[k] for u in per.values()) for k in ("user", "sys", "minflt")}


def _measured_run(client, url: str, stages: list[str]) -> dict[str, Any]:
    """One forced run of ``stages``: wall, workers' CPU/faults, study-stages done, peak RSS growth."""
    reset = all(client.run(_reset_peak).values())
    rss_before = client.run(_rss)
    u0 = _workers_usage(client)
    t0 = time.perf_counter()
    s = run_cohort(url, stages=stages, client=client, force=True)
    wall = time.perf_counter() - t0
    u1 = _workers_usage(client)
    rss_after = client.run(_rss)
    if s.failed:
        print(f"note: {len(s.failed)} study-stages failed: {sorted({r for *_, r in s.failed})}")
    use = {k: u1[k] - u0[k] for k in u0}
    cpu = use["user"] + use["sys"]
    return {"wall_s": wall, "cpu_s": cpu, "user_s": use["user"], "sys_s": use["sys"],
            "sys_share": use["sys"] / cpu if cpu else 0.0, "minflt": int(use["minflt"]), "done": len(s.done),
            "failed": len(s.failed), "peak_reset": reset,
            "peak_growth_bytes": [rss_after[w]["maxrss"] - rss_before[w]["rss"] for w in rss_after],
            # absolute figures too: a worker keeps up to engine.allocator.MALLOC_BYTES of freed heap for reuse,
            # which lowers the growth of a warm worker without lowering what it holds
            "rss_before_bytes": [rss_before[w]["rss"] for w in rss_after],
            "peak_rss_bytes": [rss_after[w]["maxrss"] for w in rss_after]}


def _study_bytes(url: str) -> tuple[int, int]:
    store = CohortStore.open(url, mode="r")
    sizes = [sum(store.read_array(k, a).nbytes for a in ("pet", "ct") if store.has_array(k, a))
             for k in store.study_keys()]
    return len(sizes), max(sizes)


def pipeline(url: str, analysis: list[str], *, malloc: bool) -> dict[str, Any]:
    """Sections 1-3 (module docstring)."""
    n_studies, study_bytes = _study_bytes(url)
    out: dict[str, Any] = {"studies": n_studies, "largest_study_pet_ct_bytes": study_bytes}
    session = _cluster(2)
    try:
        client = session.client
        client.run(load_stages)
        run_cohort(url, stages=analysis, client=client)  # untimed: imports, caches, first commits
        per_stage = {}
        for name in analysis:
            r = _measured_run(client, url, [name])
            peak = max(r["peak_growth_bytes"]) / study_bytes
            per_stage[name] = {"cpu_s_per_study": r["cpu_s"] / max(r["done"], 1), "sys_share": r["sys_share"],
                               "minflt_per_study": r["minflt"] / max(r["done"], 1), "done": r["done"],
                               "wall_s": r["wall_s"], "worker_peak_over_study_bytes": peak}
            print(f"  {name:10s} {per_stage[name]['cpu_s_per_study']:6.2f} CPU s/study-stage "
                  f"({r['done']} done, system {100 * r['sys_share']:.0f} %, "
                  f"{per_stage[name]['minflt_per_study'] / 1e3:.0f} k minor faults each, "
                  f"worker peak RSS growth {peak:.2f} x pet+ct)")
        full = _measured_run(client, url, analysis)
        light = _measured_run(client, url, LIGHT)
    finally:
        session.close()
    out.update(per_stage=per_stage, full=full, light=light)
    peaks = [p / study_bytes for p in full["peak_growth_bytes"]]
    print(f"full analysis: {full['wall_s'] / n_studies:.2f} s wall per study, {full['cpu_s'] / n_studies:.2f} CPU s "
          f"per study, system {100 * full['sys_share']:.1f} % of CPU, {full['minflt'] / 1e6:.2f} M minor faults; "
          f"worker peak RSS growth {[round(p, 2) for p in peaks]} x largest pet+ct ({study_bytes / 2**20:.0f} MiB); "
          f"worker RSS before {[round(b / 2**20) for b in full['rss_before_bytes']]} MiB, "
          f"peak {[round(b / 2**20) for b in full['peak_rss_bytes']]} MiB")
    print(f"light stages:  {light['wall_s'] / n_studies:.2f} s wall per study, "
          f"{light['cpu_s'] / n_studies:.2f} CPU s per study")
    report("pipeline_full_vs_light", f"analysis stages ({len(analysis)}) s/study", full["wall_s"] / n_studies,
           "light stages (organs, threshold, quantify) s/study", light["wall_s"] / n_studies,
           {"cpu_ratio": full["cpu_s"] / light["cpu_s"], "stages": analysis, **out,
            "worker_peak_over_study_bytes": peaks, "acceptance": {"ratio_max": 2.0, "sys_share_max": 0.10,
                                                                   "worker_peak_over_study_max": 3.0}})
    if malloc:
        session = _cluster(2, malloc_untuned=True)
        try:
            session.client.run(load_stages)
            run_cohort(url, stages=analysis, client=session.client)  # warm-up, as above
            untuned = _measured_run(session.client, url, analysis)
        finally:
            session.close()
        print(f"workers with PETCOHORT_MALLOC_TUNE=0: system {100 * untuned['sys_share']:.1f} % of CPU, "
              f"{untuned['minflt'] / 1e6:.2f} M minor faults, {untuned['cpu_s'] / n_studies:.2f} CPU s per study, "
              f"peak RSS growth {[round(p / study_bytes, 2) for p in untuned['peak_growth_bytes']]} x pet+ct")
        report("pipeline_malloc_tuned_vs_untuned", "engine workers, tune_malloc (CPU s/study)",
               full["cpu_s"] / n_studies, "PETCOHORT_MALLOC_TUNE=0 (CPU s/study)", untuned["cpu_s"] / n_studies,
               {"tuned": full, "untuned": untuned, "malloc_bytes": MALLOC_BYTES,
                "minflt_ratio": full["minflt"] / max(untuned["minflt"], 1),
                "sys_s_ratio": full["sys_s"] / untuned["sys_s"] if untuned["sys_s"] else None})
    return out


def _pairs(url: str, n: int) -> list[tuple[str, str]]:
    store = CohortStore.open(url, mode="r")
    attrs = {k: store.study_attrs(k) for k in store.study_keys()}
    base = {a["patient"]: k for k, a in attrs.items() if a.get("timepoint") == 0}
    return [(k, base[a["patient"]]) for k, a in sorted(attrs.items())
            if a.get("timepoint", 0) > 0 and a["patient"] in base][:n]


def _timed(fn) -> tuple[Any, float, float]:
    u0, t0 = _usage(), time.perf_counter()
    out = fn()
    u1 = _usage()
    return out, time.perf_counter() - t0, (u1["user"] - u0["user"]) + (u1["sys"] - u0["sys"])


def registration(url: str, n_pairs: int) -> None:
    """Section 4 (module docstring)."""
    from petcohort.engine.segment import registration as reg
    from petcohort.engine.segment.rigid import Geometry, transform_difference

    ants = reg._ants()  # sets one ITK thread before ants is first imported, for both calls
    store = CohortStore.open(url, mode="r")
    rows = []
    for fu, bl in _pairs(url, n_pairs):
        fg, bg = Geometry.from_attrs(store.study_attrs(fu)), Geometry.from_attrs(store.study_attrs(bl))
        fixed, moving = store.read_array(fu, "pet"), store.read_array(bl, "pet")
        mask = store.read_array(bl, "seg/manual") if store.has_array(bl, "seg/manual") else None
        new, t_new, c_new = _timed(lambda: reg.register_rigid(fixed, fg, moving, bg, moving_mask=mask, seed=42))
        old, t_old, c_old = _timed(lambda: reg.register_rigid(fixed, fg, moving, bg, moving_mask=mask, seed=42,
                                                              schedule="full"))

        def stock():
            return ants.registration(fixed=reg._to_ants(ants, fixed, fg), moving=reg._to_ants(ants, moving, bg),
                                     type_of_transform="Rigid")

        _, t_stock, c_stock = _timed(stock)
        d_mm, d_deg = transform_difference(new.transform, old.transform)
        rows.append({"wall_s": t_new, "cpu_s": c_new, "full_schedule_wall_s": t_old, "full_schedule_cpu_s": c_old,
                     "stock_rigid_wall_s": t_stock, "stock_rigid_cpu_s": c_stock, "vs_full_schedule_mm": d_mm,
                     "vs_full_schedule_deg": d_deg, "corr_after": new.corr_after,
                     "full_schedule_corr_after": old.corr_after, "shape": list(fixed.shape)})
        print(f"  pair {len(rows)}: register_rigid {t_new:.2f} s, full-resolution schedule {t_old:.2f} s, "
              f"stock Rigid {t_stock:.2f} s; vs full schedule {d_mm:.2f} mm / {d_deg:.3f} deg")
    if not rows:
        print("no baseline/follow-up pairs in the cohort: registration not measured")
        return
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "shape"}
    report("pipeline_registration_vs_stock_rigid", "register_rigid (s/pair)", mean["wall_s"],
           'ants.registration(type_of_transform="Rigid") (s/pair)', mean["stock_rigid_wall_s"],
           {"pairs": rows, "mean": mean, "full_schedule_ratio": mean["wall_s"] / mean["full_schedule_wall_s"],
            "tolerance": {"mm": 1.0, "deg": 0.5}, "itk_threads": 1})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=4, help="synthetic patients (4 -> 11 studies)")
    parser.add_argument("--fov-scale", type=float, default=1.0, help="phantom body scale (1 = adult, the demo's)")
    parser.add_argument("--reg-pairs", type=int, default=2, help="baseline/follow-up pairs for section 4")
    parser.add_argument("--skip-malloc", action="store_true", help="skip the untuned-allocator run (section 3)")
    parser.add_argument("--skip-registration", action="store_true", help="skip section 4")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("distributed").setLevel(logging.WARNING)  # the workers' start/stop chatter
    load_stages()
    analysis = [s for s in stage_order() if s not in MODEL_STAGES]
    tmp = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    try:
        from petcohort.pipelines.synthetic import synthesize

        url = str(tmp / "cohort")
        synthesize(url, patients=args.patients, sites=1, seed=0, fov_scale=args.fov_scale)
        print(f"per stage (2 workers, --force, {', '.join(analysis)}):")
        pipeline(url, analysis, malloc=not args.skip_malloc)
        if not args.skip_registration:
            print("registration, one ITK thread, in this process:")
            registration(url, args.reg_pairs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
