"""What petcohort knows of an nnU-Net model without importing nnU-Net: the
trained-folder layout (``dataset.json``, ``plans.json``, ``fold_<k>``) and the
training plan overrides. Re-exported by ``engine/segment/nnunet.py`` (the only
module that imports nnunetv2)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from petcohort.engine.errors import InputError, SegmentationError

__all__ = ["ModelInfo", "TrainPlan", "read_model_info", "load_json"]


@dataclass(frozen=True)
class ModelInfo:
    """What a trained nnU-Net model folder holds (read from its JSON files)."""

    folder: str
    channel_names: tuple[str, ...]          # in channel order ("0", "1", ...)
    labels: dict[str, int]
    folds: tuple[str, ...]                  # folds with the requested checkpoint, e.g. ("0", "1")
    configuration: str | None
    normalization: tuple[str, ...] | None   # per channel, from the plans (e.g. "ZScoreNormalization")


def load_json(path: str, what: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise SegmentationError("MODEL_INCOMPLETE", f"model folder lacks {what}: {path} not found") from None
    except json.JSONDecodeError as exc:
        raise SegmentationError("MODEL_INCOMPLETE", f"{path} is not valid JSON: {exc}") from None


def read_model_info(folder: str | os.PathLike, *, checkpoint: str = "checkpoint_final.pth") -> ModelInfo:
    """Check a trained model folder and read its channels, labels and folds.

    Raises
    ------
    SegmentationError
        ``MODEL_INCOMPLETE`` when the folder, ``dataset.json``, ``plans.json``
        or every ``fold_<k>/<checkpoint>`` is missing.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise SegmentationError("MODEL_INCOMPLETE", f"model folder {folder!r} does not exist")
    ds = load_json(os.path.join(folder, "dataset.json"), "dataset.json")
    plans = load_json(os.path.join(folder, "plans.json"), "plans.json")
    names = ds.get("channel_names", ds.get("modality"))
    if not isinstance(names, dict) or not names:
        raise SegmentationError("MODEL_INCOMPLETE", f"{folder}/dataset.json has no channel_names")
    channel_names = tuple(str(names[k]) for k in sorted(names, key=int))
    folds = tuple(sorted((d[len("fold_"):] for d in os.listdir(folder)
                          if d.startswith("fold_") and os.path.isfile(os.path.join(folder, d, checkpoint))),
                         key=lambda f: (not f.isdigit(), f)))
    if not folds:
        raise SegmentationError("MODEL_INCOMPLETE", f"model folder {folder!r} has no fold_<k>/{checkpoint}")
    config = os.path.basename(os.path.normpath(folder)).split("__")[-1] or None
    norm = plans.get("configurations", {}).get(config, {}).get("normalization_schemes") if config else None
    return ModelInfo(folder=folder, channel_names=channel_names, labels=dict(ds.get("labels", {})), folds=folds,
                     configuration=config, normalization=tuple(norm) if norm else None)


@dataclass(frozen=True)
class TrainPlan:
    """Overrides of nnU-Net's 3d_fullres plan and trainer schedule (documented in models/README.md)."""

    base_features: int = 8
    max_features: int = 64
    patch_size: tuple[int, int, int] | None = (48, 48, 48)   # None: nnU-Net's own choice
    batch_size: int = 2
    epochs: int = 10
    iterations_per_epoch: int = 25
    val_iterations_per_epoch: int = 5
    initial_lr: float = 1e-2
    target_spacing: tuple[float, float, float] | None = None  # mm (z, y, x); None: nnU-Net's median spacing

    def __post_init__(self) -> None:
        for name in ("base_features", "max_features", "batch_size", "epochs", "iterations_per_epoch",
                     "val_iterations_per_epoch"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise InputError("BAD_PARAMETER", f"{name} must be an int >= 1, got {v!r}")
        if self.patch_size is not None and (len(self.patch_size) != 3 or min(self.patch_size) < 8):
            raise InputError("BAD_PARAMETER", f"patch_size must be 3 ints >= 8 (z, y, x), got {self.patch_size!r}")
        if self.target_spacing is not None and (len(self.target_spacing) != 3 or min(self.target_spacing) <= 0):
            raise InputError("BAD_PARAMETER", f"target_spacing must be 3 positive mm values (z, y, x), "
                                              f"got {self.target_spacing!r}")
