"""``petcohort train``: nnU-Net planning, preprocessing and training of one exported dataset.

Backend of the CLI command; the nnU-Net calls live in
:mod:`petcohort.engine.segment.nnunet` (the only module importing nnunetv2).
The raw dataset comes from ``petcohort export-nnunet`` (its
``splits_final.json`` holds the patient-level folds shared by U-Net_BL and
U-Net_FU and is copied next to the preprocessed data, where nnU-Net reads it).
Each trained fold is then validated here: the fold model predicts its held-out
cases (so a patient is segmented by the model that did not see it) and the
Dice per case is written to ``<model folder>/petcohort_validation.json``.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from petcohort.engine.errors import InputError
from petcohort.engine.kernels.metrics import dice
from petcohort.engine.segment import nnunet

__all__ = ["train", "validate_fold"]

log = logging.getLogger(__name__)


def _dataset_dir(raw_dir: Path, dataset_id: int) -> Path:
    found = sorted(raw_dir.glob(f"Dataset{dataset_id:03d}_*"))
    if len(found) != 1:
        raise InputError("NO_DATASET", f"expected one Dataset{dataset_id:03d}_* folder in {raw_dir}, "
                                       f"found {[f.name for f in found]}")
    return found[0]


def _read_case(images: Path, case: str, n_channels: int) -> tuple[list[np.ndarray], list[float]]:
    import SimpleITK as sitk

    chans, spacing = [], None
    for i in range(n_channels):
        img = sitk.ReadImage(str(images / f"{case}_{i:04d}.nii.gz"))
        chans.append(sitk.GetArrayFromImage(img))
        spacing = list(img.GetSpacing())[::-1]   # ITK (x, y, z) -> array order (z, y, x)
    return chans, spacing  # type: ignore[return-value]


def validate_fold(model_folder: str, raw_dataset: Path, fold: int, cases: Sequence[str], *,
                  device: str = "cpu") -> dict[str, Any]:
    """Dice of fold ``fold``'s model on its held-out ``cases`` (raw NIfTI, in-process prediction)."""
    import SimpleITK as sitk

    model = nnunet.NnUNetModel(model_folder, folds=[fold], device=device)
    per_case: dict[str, float | None] = {}
    for case in cases:
        chans, spacing = _read_case(raw_dataset / "imagesTr", case, len(model.info.channel_names))
        pred = model.predict(chans, spacing, tta=False)
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(raw_dataset / "labelsTr" / f"{case}.nii.gz")))
        per_case[case] = dice(truth > 0, pred > 0)
    values = [v for v in per_case.values() if v is not None]
    return {"fold": fold, "cases": per_case, "dice_mean": float(np.mean(values)) if values else None}


def train(raw_dir: str | os.PathLike, work_dir: str | os.PathLike, *, dataset_id: int,
          folds: Sequence[int] = (0, 1, 2, 3, 4), plan: nnunet.TrainPlan | None = None, device: str = "auto",
          seed: int = 0, validate: bool = True) -> dict[str, Any]:
    """Plan, preprocess and train ``folds`` of one raw dataset; returns a summary.

    Parameters
    ----------
    raw_dir : path  nnU-Net raw folder written by ``export-nnunet`` (holds ``DatasetXXX_*``)
    work_dir : path  receives ``preprocessed/`` and ``results/`` (nnU-Net layout)
    dataset_id : int
    folds : ints  folds of ``splits_final.json`` to train
    plan : TrainPlan  network size and schedule (default: the tiny CPU plan)
    device : "auto" | "cpu" | "cuda"
    seed : int  torch/numpy seed per fold
    validate : bool  predict each fold's held-out cases with that fold's model and record Dice

    Returns
    -------
    dict  {"model_folder", "folds", "validation": {fold: {...}}, "seconds"}
    """
    t0 = time.perf_counter()
    plan = plan or nnunet.TrainPlan()
    raw_dir, work = Path(raw_dir).resolve(), Path(work_dir).resolve()
    ds_dir = _dataset_dir(raw_dir, dataset_id)
    splits_file = ds_dir / "splits_final.json"
    if not splits_file.is_file():
        raise InputError("NO_SPLITS", f"{splits_file} is missing (export with `petcohort export-nnunet`)")
    splits = json.loads(splits_file.read_text())
    bad = [f for f in folds if not (isinstance(f, int) and 0 <= f < len(splits))]
    if bad or not folds:
        raise InputError("BAD_VALUE", f"folds must be ints in 0..{len(splits) - 1}, got {list(folds)}")
    if device == "auto":
        device = nnunet.default_device()
    pre, res = work / "preprocessed", work / "results"
    pre.mkdir(parents=True, exist_ok=True)
    res.mkdir(parents=True, exist_ok=True)
    validation: dict[int, Any] = {}
    with nnunet.nnunet_paths(str(raw_dir), str(pre), str(res)):
        nnunet.plan_and_preprocess(dataset_id, plan)
        shutil.copyfile(splits_file, pre / ds_dir.name / "splits_final.json")
        folder = ""
        for fold in folds:
            t = time.perf_counter()
            folder = nnunet.train_fold(dataset_id, fold, plan, device=device, seed=seed)
            log.info("fold %d trained in %.0f s", fold, time.perf_counter() - t)
    for fold in folds if validate else ():
        validation[fold] = validate_fold(folder, ds_dir, fold, splits[fold]["val"], device=device)
    summary = {"model_folder": folder, "folds": list(folds), "device": device, "seed": seed,
               "plan": {k: getattr(plan, k) for k in plan.__dataclass_fields__}, "validation": validation,
               "seconds": round(time.perf_counter() - t0, 1)}
    Path(folder, "petcohort_validation.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary
