"""Cohort nnU-Net inference throughput: the engine vs ``nnUNetv2_predict`` called once per study.

Run: ``python benchmarks/bench_nnunet.py [--patients 2] [--model FOLDER] [--tile-step 0.5] [--device cuda]``
(about 3-6 min on 2 CPU cores with the demo U-Net_BL; needs ``scripts/install_seg.sh``).

Same studies, same model folder and fold, same settings (tile step, no TTA, CPU, all cores) in
the same run:

* candidate: ``petcohort run --stages segment_bl`` through a local Dask cluster, once with one
  worker process per core (the engine's default: Dask's nanny sets ``OMP_NUM_THREADS=1``, so each
  worker's torch uses one thread) and once with a single worker (one study at a time); the
  predictor is loaded once per worker and reused, inputs are read from the Zarr store and masks
  committed back to it;
* baseline: stock ``nnUNetv2_predict_from_modelfolder`` run once per study (a new process that
  imports torch and nnU-Net, loads the weights, predicts, exports the NIfTI), the way a per-study
  shell loop or a workflow manager calls it; the study's NIfTI inputs are written beforehand
  (``nnunet_export.write_case``) and not timed, so the baseline is not charged for the export.

Both runs are timed once (not best-of-N: each is minutes long); throughput in studies/min is in
``extra``. The masks of both are compared (Dice), so the two really did the same work.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _harness import report

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "models/demo/Dataset501_PetCohortBL/nnUNetTrainer__PetCohortPlans__3d_fullres"


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _engine(store_url: str, model: str, tile_step: float, workers: int, device: str) -> float:
    from petcohort.engine.cluster import connect
    from petcohort.engine.cluster_config import parse_cluster_config
    from petcohort.pipelines.config import RunConfig
    from petcohort.pipelines.run import run_cohort

    config = RunConfig(extra={"model_bl": model, "folds": [0], "tta": False, "tile_step": tile_step,
                              "device": device})
    # the engine's own local cluster (engine.cluster.connect), as `petcohort run` starts it
    cluster = parse_cluster_config({"kind": "local", "n_workers": workers, "threads_per_worker": 1,
                                    "dashboard_address": None}, source="bench_nnunet")
    session = connect(cluster)
    try:
        client = session.client
        client.wait_for_workers(workers)
        threads = client.run(_torch_threads)
        print(f"engine, {workers} worker(s): torch threads per worker {sorted(threads.values())}")
        t0 = time.perf_counter()
        summary = run_cohort(store_url, stages=["segment_bl"], config=config, client=client, force=True)
        seconds = time.perf_counter() - t0
    finally:
        session.close()
    if summary.failed:
        raise SystemExit(f"engine run failed: {summary.failed}")
    return seconds


def _cli(store, keys: list[str], model: str, tile_step: float, work: Path, device: str) -> tuple[float, dict]:
    from petcohort.storage.nnunet_export import write_case

    exe = Path(sys.executable).with_name("nnUNetv2_predict_from_modelfolder")
    if not exe.exists():
        raise SystemExit(f"{exe} not found: install the segmentation stack (scripts/install_seg.sh)")
    inputs = {}
    for key in keys:  # one input folder per study: one CLI call per study
        inputs[key] = work / "in" / key
        write_case(store, key, inputs[key], "BL")
    total = 0.0
    for key in keys:
        out = work / "out" / key
        cmd = [str(exe), "-i", str(inputs[key]), "-o", str(out), "-m", model, "-f", "0", "-step_size",
               str(tile_step), "--disable_tta", "-device", device, "-npp", "1", "-nps", "1"]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env={**os.environ, "nnUNet_compile": "f"})
        total += time.perf_counter() - t0
    return total, {key: work / "out" / key / f"{key}.nii.gz" for key in keys}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=2)
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--tile-step", type=float, default=0.5)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cuda: one engine worker (the GPU) vs the CLI on the GPU")
    args = ap.parse_args()
    import SimpleITK as sitk

    from petcohort.engine.kernels.metrics import dice
    from petcohort.pipelines.synthetic import synthesize
    from petcohort.storage.store import CohortStore

    work = Path(tempfile.mkdtemp(prefix="bench-nnunet-"))
    try:
        store_url = str(work / "cohort.zarr")
        synthesize(store_url, patients=args.patients, sites=2, seed=7, mip_dir=work / "mips")
        store = CohortStore.open(store_url)
        keys = store.study_keys()
        workers = (os.cpu_count() or 1) if args.device == "cpu" else 1
        engine_s = _engine(store_url, args.model, args.tile_step, workers, args.device)
        engine1_s = _engine(store_url, args.model, args.tile_step, 1, args.device) if workers > 1 else engine_s
        cli_s, outputs = _cli(store, keys, args.model, args.tile_step, work, args.device)
        agreement = [dice(store.read_array(k, "seg/nnunet_bl") > 0,
                          sitk.GetArrayFromImage(sitk.ReadImage(str(outputs[k]))) > 0) for k in keys]
        n = len(keys)
        report("nnunet_cohort_inference_1worker", f"engine segment_bl, 1 worker ({n} studies)", engine1_s,
               f"nnUNetv2_predict per study ({n} calls)", cli_s,
               extra={"studies": n, "speedup": cli_s / engine1_s})
        report("nnunet_cohort_inference", f"engine segment_bl, {workers} workers ({n} studies)", engine_s,
               f"nnUNetv2_predict per study ({n} calls)", cli_s,
               extra={"studies": n, "workers": workers, "engine_studies_per_min": 60 * n / engine_s,
                      "engine_1worker_studies_per_min": 60 * n / engine1_s,
                      "cli_studies_per_min": 60 * n / cli_s, "speedup": cli_s / engine_s,
                      "tile_step": args.tile_step, "tta": False, "device": args.device, "model": os.path.relpath(args.model, ROOT),
                      "dice_engine_vs_cli": [None if d is None else round(d, 4) for d in agreement],
                      "voxels_per_study": [int(np.prod(store.read_array(k, "pet").shape)) for k in keys]})
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
