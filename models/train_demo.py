"""Train the demo U-Net_BL and U-Net_FU on synthetic patients and copy them to models/demo/.

    .venv/bin/python models/train_demo.py WORK_DIR [PATIENTS=15] [EPOCHS=12] [DATASETS=501,502]

DATASETS=0 only prepares the data (synthesis, registration, export); two processes given 501 and 502
after that train the two networks side by side (one torch thread each on a 2-core machine).

Synthetic training cohort: seed 1000 (the demo cohort uses seed 0, so demo patients are held out).
Everything large (store, nnU-Net raw/preprocessed/results) stays in WORK_DIR; only the final
weights (network weights only, no optimiser state), dataset.json, plans.json and the validation
summary are copied into models/demo/Dataset50{1,2}_PetCohort{BL,FU}/nnUNetTrainer__PetCohortPlans__3d_fullres
(nnU-Net's folder naming, so stock nnU-Net tools load them too). See models/README.md.
"""
from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from pathlib import Path

from petcohort.engine.errors import PetCohortError
from petcohort.engine.segment.nnunet import TrainPlan
from petcohort.pipelines.config import RunConfig
from petcohort.pipelines.stage_register import register_stage_fn
from petcohort.pipelines.stages import StageContext
from petcohort.pipelines.synthetic import synthesize
from petcohort.pipelines.train import train
from petcohort.storage.nnunet_export import export_nnunet
from petcohort.storage.store import CohortStore

log = logging.getLogger("train_demo")
SEED = 1000
DEMO = Path(__file__).resolve().parent / "demo"
# 6 mm voxels: ~3.4x fewer voxels than the phantoms' ~4 mm, so CPU inference fits `make demo`;
# initial_lr 3e-3 (nnU-Net's default 1e-2 made the tiny 4-channel U-Net_FU collapse to an
# all-background output after ~18 epochs while its loss kept falling; see models/README.md)
PLAN = {"base_features": 8, "max_features": 32, "patch_size": (48, 48, 48), "batch_size": 2,
        "iterations_per_epoch": 50, "val_iterations_per_epoch": 5, "initial_lr": 3e-3,
        "target_spacing": (6.0, 6.0, 6.0)}


def register_all(store: CohortStore) -> None:
    """The register stage on every follow-up (what `petcohort run --stages register` does)."""
    keys = store.study_keys()
    attrs = {k: store.study_attrs(k) for k in keys}
    base = {a["patient"]: k for k, a in attrs.items() if a["timepoint"] == 0}
    for k, a in attrs.items():
        if a["timepoint"] == 0 or (store.stage_record(k, "register") or {}).get("status") == "committed":
            continue
        t = time.time()
        ctx = StageContext(store=store, key=k, attrs=a, config=RunConfig(), baseline_key=base.get(a["patient"]))
        try:
            out = register_stage_fn(ctx)
        except PetCohortError as exc:  # the export skips it with a reason
            log.warning("register %s: %s", k, exc)
            continue
        store.commit_stage(k, "register", arrays=out.arrays, record={"status": "committed", "summary": out.summary})
        log.info("registered %s in %.0f s (corr %.3f -> %.3f)", k, time.time() - t,
                 out.summary["qc"]["corr_before"], out.summary["qc"]["corr_after"])


def copy_model(folder: str, dest: Path) -> None:
    """dataset.json, plans.json, validation and fold checkpoints with the network weights only."""
    import torch

    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    src = Path(folder)
    for name in ("dataset.json", "plans.json", "petcohort_validation.json"):
        shutil.copyfile(src / name, dest / name)
    for fold_dir in sorted(src.glob("fold_*")):
        ckpt = torch.load(fold_dir / "checkpoint_final.pth", map_location="cpu", weights_only=False)
        slim = {k: ckpt[k] for k in ("network_weights", "trainer_name", "init_args",
                                     "inference_allowed_mirroring_axes") if k in ckpt}
        (dest / fold_dir.name).mkdir()
        torch.save(slim, dest / fold_dir.name / "checkpoint_final.pth")


def main(work: Path, patients: int, epochs: int, datasets: tuple[int, ...] = (501, 502)) -> None:
    t0 = time.time()
    store_path = work / "train.zarr"
    if not store_path.exists():
        synthesize(store_path, patients=patients, sites=2, seed=SEED)
    store = CohortStore.open(store_path)
    register_all(store)
    raw = work / "raw"
    if not raw.exists():
        out = export_nnunet(store, raw)
        log.info("export: %s", json.dumps({k: v for k, v in out.items() if k != "folds"}))
    plan = TrainPlan(epochs=epochs, **PLAN)
    for ds_id in (d for d in datasets if d):
        s = train(raw, work / "work", dataset_id=ds_id, folds=(0,), plan=plan, device="auto", seed=SEED)
        log.info("dataset %d: validation %s", ds_id, json.dumps(s["validation"], default=str))
        src = Path(s["model_folder"])
        copy_model(str(src), DEMO / src.parent.name / src.name)   # nnU-Net's own folder naming
    log.info("total %.0f s", time.time() - t0)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = sys.argv[1:]
    main(Path(args[0]) if args else Path("/tmp/petcohort-demo-models"),
         int(args[1]) if len(args) > 1 else 15, int(args[2]) if len(args) > 2 else 12,
         tuple(int(d) for d in args[3].split(",")) if len(args) > 3 else (501, 502))
