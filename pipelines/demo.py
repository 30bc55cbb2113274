"""`petcohort demo`: the built-in synthetic cohort through the whole pipeline.

synth (store format) -> run every stage on a Dask cluster from cluster.yaml ->
cohort tables and results.zarr -> self-contained report.html, all in OUT.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from petcohort.engine.errors import InputError

__all__ = ["run_demo"]

log = logging.getLogger(__name__)


def run_demo(out: Path | str, *, patients: int = 12, seed: int = 0, cluster_file: Path | None = None,
             sites: int = 2) -> dict:
    """Generate the demo cohort in ``out/store`` and run the whole pipeline.

    Returns a dict of what was written and how long each step took (seconds).
    A previous demo output in ``out`` is replaced (it is derived data only).
    """
    from petcohort.pipelines.report import write_report
    from petcohort.pipelines.run import run_cohort
    from petcohort.pipelines.synthetic import synthesize

    out = Path(out)
    if out.exists() and not (out / "store").exists() and any(out.iterdir()):
        raise InputError("DEMO_OUT_NOT_EMPTY",
                         f"--out {out} exists and is not a previous demo output; choose an empty folder")
    store = out / "store"
    if store.exists():
        shutil.rmtree(store)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    log.info("demo: generating %d synthetic patients (seed %d) into %s", patients, seed, store)
    synth_summary = synthesize(store, patients=patients, sites=sites, seed=seed, fmt="store",
                               mip_dir=out / "mips")
    timings["synth_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    summary = run_cohort(str(store), cluster_file=cluster_file, out=out)
    timings["run_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report = write_report(str(store), out)
    timings["report_s"] = time.perf_counter() - t0

    log.info("demo: done in %.0f s (synth %.0f s, run %.0f s, report %.0f s); report: %s",
             sum(timings.values()), timings["synth_s"], timings["run_s"], timings["report_s"], report)
    if summary.failed:
        log.warning("demo: %d study-stage(s) failed; see the summary above and `petcohort manifest`",
                    len(summary.failed))
    return {"store": str(store), "report": str(report), "timings": timings, "synth": synth_summary,
            "failed": list(summary.failed)}
