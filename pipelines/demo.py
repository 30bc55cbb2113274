"""`petcohort demo`: the built-in synthetic cohort through the whole pipeline.

synth (store format) -> run every stage on a Dask cluster from cluster.yaml ->
cohort tables and results.zarr -> self-contained report.html, all in OUT.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from petcohort.engine.errors import InputError

__all__ = ["demo_models", "run_demo"]

log = logging.getLogger(__name__)


def demo_models(models: Path | str | None) -> dict[str, Any]:
    """The demo's nnU-Net options (``segment`` section keys) for the model folders under ``models``.

    ``models`` holds ``Dataset501_*/<trainer>__<plans>__3d_fullres`` (U-Net_BL) and
    ``Dataset502_*/...`` (U-Net_FU), as ``models/demo/`` does. Returns ``{}`` (and says why in
    the log) when ``models`` is None, a network is missing or nnU-Net is not installed: the demo
    then runs without the nnU-Net stages.
    """
    import importlib.util

    if models is None:
        return {}
    found = {}
    for key, dataset in (("model_bl", "Dataset501_*"), ("model_fu", "Dataset502_*")):
        folders = sorted(p for p in Path(models).glob(f"{dataset}/*__3d_fullres") if (p / "plans.json").is_file())
        if folders:
            found[key] = str(folders[0])
    if len(found) < 2:
        log.warning("demo: no U-Net_BL and U-Net_FU model folders under %s: nnU-Net stages skipped", models)
        return {}
    if importlib.util.find_spec("nnunetv2") is None or importlib.util.find_spec("ants") is None:
        log.warning("demo: nnU-Net/ANTsPy not installed (scripts/install_seg.sh): nnU-Net stages skipped")
        return {}
    # no mirroring TTA: 8x fewer network passes on CPU; tile step 0.5 is nnU-Net's default
    return {**found, "tta": False, "tile_step": 0.5}


def _demo_config(config: Any, extra: dict[str, Any]) -> Any:
    """The demo's RunConfig: ``config`` (None = defaults) with the demo networks filled in.

    Without a user configuration the demo's CPU-friendly inference options
    (no mirroring) apply too; with one, only model folders it leaves unset
    are filled in.
    """
    from petcohort.pipelines.config import RunConfig

    if config is None:
        return RunConfig().replace({f"segment.{k}": v for k, v in extra.items()})
    fill = {f"segment.{k}": v for k, v in extra.items() if k in ("model_bl", "model_fu")
            and getattr(config.segment, k) is None}
    return config.replace(fill) if fill else config


def run_demo(out: Path | str, *, patients: int = 12, seed: int = 0, cluster_file: Path | None = None,
             sites: int = 2, models: Path | str | None = None, config: Any = None) -> dict:
    """Generate the demo cohort in ``out/store`` and run the whole pipeline.

    ``models``: folder with the demo nnU-Net networks (see :func:`demo_models`); None runs the
    pipeline without the nnU-Net stages. ``config``: a RunConfig (None: the defaults); the
    resolved configuration is written to ``out/run_config.yaml``.
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
    extra = demo_models(models)
    if extra:
        log.info("demo: nnU-Net U-Net_BL %s, U-Net_FU %s (tta off, tile step 0.5)", extra["model_bl"],
                 extra["model_fu"])
    summary = run_cohort(str(store), cluster_file=cluster_file, out=out, config=_demo_config(config, extra))
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
            "run_config": str(out / "run_config.yaml"),
            "nnunet": bool(extra),
            "failed": list(summary.failed)}
