"""Stages ``segment_bl`` and ``segment_fu``: nnU-Net U-Net_BL and U-Net_FU (METHODS.md "nnU-Net networks").

``segment_bl`` runs on every study (baselines, and follow-ups for comparison
as the paper does): channels PET (SUVbw clipped to ``[0, suv_clip]``) and CT;
writes ``seg/nnunet_bl``. ``segment_fu`` runs on follow-ups after
``register``: channels follow-up PET, follow-up CT, registered baseline PET,
registered baseline mask; writes ``seg/nnunet_fu``. Both are GPU stages; the
model is loaded once per worker process (``engine.segment.nnunet.get_model``).

Options (section ``segment`` of the run configuration, checked when it is parsed; read here
through ``RunConfig.extra``):

``model_bl``, ``model_fu``
    trained nnU-Net model folders (``.../<Trainer>__<Plans>__3d_fullres``); unset -> ``NO_MODEL``.
``folds``
    list of folds to ensemble (default: every fold in the folder).
``fold_map``
    path to ``folds.json`` from ``export-nnunet``: a patient listed there is
    segmented by the one fold model that did not see it in training
    (cross-validated predictions); other patients by the ensemble.
``tta`` (bool, default True), ``tile_step`` (float, default 0.5), ``device`` ("auto"/"cpu"/"cuda").
``fu_mask_source``
    baseline mask channel of U-Net_FU: ``"auto"`` (default: manual when the
    baseline has one, else U-Net_BL's), ``"manual"`` or ``"nnunet_bl"``; the
    choice made is recorded in the summary.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
from petcohort.engine.errors import StageError
from petcohort.engine.segment import nnunet
from petcohort.engine.segment.registration import (
    Geometry,
    RigidTransform,
    apply_transform,
)
from petcohort.pipelines.stages import StageContext, StageOutput, register_stage
from petcohort.storage.nnunet_export import BL_CHANNELS, FU_CHANNELS, clipped_pet

__all__ = ["MASK_SOURCES", "segment_bl_stage", "segment_fu_stage"]

MASK_SOURCES = ("auto", "manual", "nnunet_bl")
_FOLD_MAPS: dict[str, dict[str, int]] = {}


def _options(ctx: StageContext, model_key: str) -> dict[str, Any]:
    extra = ctx.config.extra
    folder = extra.get(model_key)
    if not folder:
        raise StageError("NO_MODEL", f"no nnU-Net model folder configured (RunConfig.extra[{model_key!r}])")
    device = extra.get("device", "auto")
    if device not in ("auto", "cpu", "cuda"):
        raise StageError("CONFIG_BAD_VALUE", f"device must be auto, cpu or cuda, got {device!r}")
    folds = extra.get("folds")
    fold_map = extra.get("fold_map")
    if fold_map:
        patient = str(ctx.attrs.get("patient"))
        mapping = _read_fold_map(str(fold_map))
        if patient in mapping:
            folds = [mapping[patient]]
    tile_step, tta = extra.get("tile_step", 0.5), extra.get("tta", True)
    if not isinstance(tile_step, (int, float)) or not 0 < tile_step <= 1 or not isinstance(tta, bool):
        raise StageError("CONFIG_BAD_VALUE", f"tile_step must be in (0, 1] and tta a bool, got {tile_step!r}, "
                                             f"{tta!r}")
    try:
        folds = None if folds is None else [int(f) for f in folds]
    except (TypeError, ValueError):
        raise StageError("CONFIG_BAD_VALUE", f"folds must be a list of ints, got {folds!r}") from None
    return {"folder": str(folder), "folds": folds, "device": nnunet.default_device() if device == "auto" else device,
            "tta": tta, "tile_step": float(tile_step)}


def _read_fold_map(path: str) -> dict[str, int]:
    if path not in _FOLD_MAPS:
        try:
            with open(path, encoding="utf-8") as fh:
                _FOLD_MAPS[path] = {str(k): int(v) for k, v in json.load(fh).items()}
        except (OSError, ValueError, AttributeError) as exc:
            raise StageError("CONFIG_BAD_VALUE", f"fold_map {path!r} is not a readable folds.json: {exc}") from None
    return _FOLD_MAPS[path]


def _ct(ctx: StageContext) -> np.ndarray:
    """The study's CT on the PET grid; a PET-only study fails here with ``NO_CT`` (nothing else does)."""
    if not ctx.store.has_array(ctx.key, "ct"):
        raise StageError("NO_CT", f"study {ctx.key} has no CT ({ctx.attrs.get('ct_reason') or 'none ingested'}): "
                                  "the nnU-Net networks take a CT channel")
    return ctx.store.read_array(ctx.key, "ct")


def _pet(ctx: StageContext, key: str, name: str = "pet") -> np.ndarray:
    return clipped_pet(ctx.store, key, name, suv_clip=ctx.config.suv_clip)


def _run(ctx: StageContext, opts: dict[str, Any], channels: list[np.ndarray], names) -> np.ndarray:
    model = nnunet.get_model(opts["folder"], folds=opts["folds"], device=opts["device"])
    return model.predict(channels, ctx.spacing, channel_names=names, tta=opts["tta"], tile_step=opts["tile_step"])


def _summary(opts: dict[str, Any], mask: np.ndarray, spacing) -> dict[str, Any]:
    model = nnunet.get_model(opts["folder"], folds=opts["folds"], device=opts["device"])
    voxels = int(np.count_nonzero(mask))
    return {"model": opts["folder"], "folds": list(model.folds), "device": opts["device"], "tta": opts["tta"],
            "tile_step": opts["tile_step"], "voxels": voxels, "volume_ml": voxels * float(np.prod(spacing)) / 1000}


@register_stage("segment_bl", params=("suv.clip", "segment.model_bl", "segment.folds", "segment.fold_map",
                                     "segment.tta", "segment.tile_step", "segment.device"), gpu=True)
def segment_bl_stage(ctx: StageContext) -> StageOutput:
    """U-Net_BL on this study's PET (clipped SUVbw) and CT -> ``seg/nnunet_bl``."""
    opts = _options(ctx, "model_bl")
    mask = _run(ctx, opts, [_pet(ctx, ctx.key), _ct(ctx)], BL_CHANNELS)
    mask = (mask > 0).astype(np.uint8)
    return StageOutput(arrays={"seg/nnunet_bl": mask}, summary=_summary(opts, mask, ctx.spacing))


def _baseline_mask(ctx: StageContext, reg: dict[str, Any]) -> tuple[np.ndarray, str]:
    store, base = ctx.store, ctx.baseline_key
    choice = ctx.config.extra.get("fu_mask_source", "auto")
    if choice not in MASK_SOURCES:
        raise StageError("CONFIG_BAD_VALUE", f"fu_mask_source must be one of {MASK_SOURCES}, got {choice!r}")
    if choice in ("auto", "manual") and store.has_array(ctx.key, "reg/baseline_mask"):
        return store.read_array(ctx.key, "reg/baseline_mask"), "manual"
    if choice == "manual":
        raise StageError("NO_BASELINE_MASK", f"fu_mask_source='manual' but baseline {base!r} has no manual mask")
    if not store.has_array(base, "seg/nnunet_bl"):
        raise StageError("NO_BASELINE_MASK", f"baseline {base!r} has neither a manual mask nor seg/nnunet_bl")
    tx = RigidTransform.from_dict(reg["transform"])
    mask = apply_transform(tx, store.read_array(base, "seg/nnunet_bl"),
                           moving_geom=Geometry.from_attrs(store.study_attrs(base)),
                           fixed_shape=np.shape(store.read_array(ctx.key, "reg/baseline_pet")),
                           fixed_geom=Geometry.from_attrs(ctx.attrs), label=True)
    return mask, "nnunet_bl"


@register_stage("segment_fu", requires=("register",), needs_baseline=("segment_bl",), applies_to="followup",
                params=("suv.clip", "segment.model_fu", "segment.folds", "segment.fold_map", "segment.tta",
                        "segment.tile_step", "segment.device", "segment.fu_mask_source"), gpu=True)
def segment_fu_stage(ctx: StageContext) -> StageOutput:
    """U-Net_FU on FU PET, FU CT, registered BL PET and BL mask -> ``seg/nnunet_fu``."""
    if ctx.baseline_key is None:
        raise StageError("NO_BASELINE", f"follow-up {ctx.key!r} has no baseline study: U-Net_FU cannot run")
    opts = _options(ctx, "model_fu")
    ct = _ct(ctx)
    rec = ctx.store.stage_record(ctx.key, "register")
    if not rec or rec.get("status") != "committed" or not ctx.store.has_array(ctx.key, "reg/baseline_pet"):
        raise StageError("NO_REGISTRATION", f"follow-up {ctx.key!r} has no committed registration")
    bl_mask, source = _baseline_mask(ctx, rec.get("summary") or {})
    channels = [_pet(ctx, ctx.key), ct, _pet(ctx, ctx.key, "reg/baseline_pet"),
                (bl_mask > 0).astype(np.float32)]
    mask = (_run(ctx, opts, channels, FU_CHANNELS) > 0).astype(np.uint8)
    return StageOutput(arrays={"seg/nnunet_fu": mask},
                       summary={**_summary(opts, mask, ctx.spacing), "baseline_mask_source": source})
