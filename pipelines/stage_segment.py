"""Stages ``segment_bl`` and ``segment_fu``: nnU-Net U-Net_BL and U-Net_FU (docs/methods.md "nnU-Net networks").

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
``channel_map``, ``lesion_label``
    how a model trained elsewhere reads a study (bring your own model). Each
    channel of dataset.json ``channel_names`` is bound, in the model's own
    order, to a study input by name (PET/SUV/PT/SUVbw -> PET in SUVbw clipped
    to ``[0, suv.clip]``, the run's clip whatever the model was trained on;
    CT/CTres/CT_HU -> CT in HU on the PET grid; PET_BL and noNorm (U-Net_FU)
    -> registered baseline PET and mask; :data:`CHANNEL_SYNONYMS` lists every
    name) or by ``channel_map`` ``{name: pet | ct | baseline_pet |
    baseline_mask}``; the lesion label is picked by name from dataset.json
    ``labels`` (``lesion_label``, or lesion/tumor/tumour/lesions, or the only
    foreground label). Intensities are then normalised by nnU-Net as the
    model's plans.json records. The binding is recorded in the summary.

:func:`validate_models` checks every model of a run once, before any study
(``run_cohort``); a task meets the same checks with the same messages.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from petcohort.engine.errors import ConfigError, SegmentationError, StageError
from petcohort.engine.segment import nnunet
from petcohort.engine.segment.nnunet_model import CHANNEL_SYNONYMS, ROLES, ModelBinding, channel_key
from petcohort.engine.segment.registration import apply_transform
from petcohort.engine.segment.rigid import Geometry, RigidTransform
from petcohort.pipelines.config import RunConfig
from petcohort.pipelines.stages import MODEL_STAGES, StageContext, StageOutput, register_stage
from petcohort.storage.nnunet_export import clipped_pet

__all__ = ["STAGE_INPUTS", "bind_stage_model", "segment_bl_stage", "segment_fu_stage",
           "validate_models"]

#: The study inputs (roles) each nnU-Net stage can give its model's channels.
STAGE_INPUTS = {"segment_bl": ("pet", "ct"), "segment_fu": ROLES}
_FOLD_MAPS: dict[str, dict[str, int]] = {}


def _options(ctx: StageContext, model_key: str) -> dict[str, Any]:
    """The inference options of this study from the run configuration (validated there, before any study)."""
    seg = ctx.config.segment
    folder = getattr(seg, model_key)
    if not folder:
        raise StageError("NO_MODEL", f"no nnU-Net model folder configured (segment.{model_key})")
    folds = None if seg.folds is None else list(seg.folds)
    if seg.fold_map:
        mapping = _read_fold_map(str(seg.fold_map))
        patient = str(ctx.attrs.get("patient"))
        if patient in mapping:
            folds = [mapping[patient]]
    return {"folder": str(folder), "folds": folds,
            "device": nnunet.default_device() if seg.device == "auto" else seg.device,
            "tta": seg.tta, "tile_step": float(seg.tile_step)}


def _read_fold_map(path: str) -> dict[str, int]:
    if path not in _FOLD_MAPS:
        try:
            with open(path, encoding="utf-8") as fh:
                _FOLD_MAPS[path] = {str(k): int(v) for k, v in json.load(fh).items()}
        except (OSError, ValueError, AttributeError) as exc:
            raise StageError("BAD_VALUE", f"fold_map {path!r} is not a readable folds.json: {exc}") from None
    return _FOLD_MAPS[path]


def _how_to_map(stage: str) -> str:
    names = "; ".join(f"{role}: {', '.join(sorted(CHANNEL_SYNONYMS[role]))}" for role in STAGE_INPUTS[stage])
    return (f"{stage} gives {', '.join(STAGE_INPUTS[stage])}; names read without a map (any case): {names}. "
            f"Map other names in the run configuration, e.g. run.yaml `segment: {{channel_map: {{<name>: pet}}}}` "
            f"or --set 'segment.channel_map={{<name>: pet}}'")


def _model_error(exc: SegmentationError, stage: str) -> ConfigError:
    """A model problem as the configuration error it is: the key, the model's names and the way out."""
    where = f"segment.{MODEL_STAGES[stage]}"
    if exc.reason == "MODEL_CHANNELS_MISMATCH":
        return ConfigError(exc.reason, f"{where}: {exc.message}. {_how_to_map(stage)}")
    if exc.reason == "MODEL_LABEL_MISMATCH":
        return ConfigError(exc.reason, f"{where}: {exc.message} with segment.lesion_label (e.g. "
                                       f"--set segment.lesion_label=<label name>)")
    return ConfigError(exc.reason, f"{where}: {exc.message}")


def bind_stage_model(config: RunConfig, stage: str) -> ModelBinding:
    """How the model of ``stage`` (``segment_bl``/``segment_fu``) reads a study (no nnU-Net import).

    Raises
    ------
    StageError
        ``NO_MODEL`` when the stage's model folder is not configured.
    ConfigError
        ``MODEL_INCOMPLETE`` (no dataset.json/plans.json/checkpoint),
        ``MODEL_CHANNELS_MISMATCH`` (a channel bound to no input of the stage),
        ``MODEL_LABEL_MISMATCH`` (no lesion label), naming the key, the model's
        names and how to map them.
    """
    key = MODEL_STAGES[stage]
    folder = getattr(config.segment, key)
    if not folder:
        raise StageError("NO_MODEL", f"no nnU-Net model folder configured (segment.{key})")
    try:
        info = nnunet.read_model_info(folder)
        return nnunet.bind_model(info, STAGE_INPUTS[stage], channel_map=config.segment.channel_map,
                                 lesion_label=config.segment.lesion_label)
    except SegmentationError as exc:
        raise _model_error(exc, stage) from None


def validate_models(config: RunConfig, stages: Iterable[str]) -> dict[str, ModelBinding]:
    """Check the model of every nnU-Net stage in ``stages`` once, before any study runs.

    Each model folder must hold dataset.json, plans.json and the checkpoints of
    the configured folds, each fitting the network its plans describe; its
    channels and lesion label must bind (:func:`bind_stage_model`); every
    ``segment.channel_map`` entry must name a channel of one of the models.

    Returns
    -------
    dict of str to ModelBinding
        Per checked stage.

    Raises
    ------
    ConfigError
        ``NO_MODEL`` (a selected nnU-Net stage without its folder), the
        reasons of :func:`bind_stage_model`, ``MODEL_ARCHITECTURE_MISMATCH``,
        ``BAD_VALUE`` (a ``segment.channel_map`` name no model has).
    """
    bindings: dict[str, ModelBinding] = {}
    for stage in (s for s in stages if s in MODEL_STAGES):
        key = MODEL_STAGES[stage]
        if not getattr(config.segment, key):
            raise ConfigError("NO_MODEL", f"segment.{key} is not set: stage {stage} needs a trained nnU-Net model "
                                          f"folder (--model-{key.split('_')[1]})")
        bindings[stage] = bind_stage_model(config, stage)
        try:
            nnunet.check_model(getattr(config.segment, key), folds=config.segment.folds)
        except SegmentationError as exc:
            raise _model_error(exc, stage) from None
    known = {channel_key(c) for b in bindings.values() for c in b.channels}
    stray = [k for k in config.segment.channel_map or {} if channel_key(k) not in known]
    if bindings and stray:
        channels = {MODEL_STAGES[s]: list(b.channels) for s, b in bindings.items()}
        raise ConfigError("BAD_VALUE", f"segment.channel_map: {stray} name no channel of the models "
                                              f"(their channels: {channels})")
    return bindings


def _check_ct(ctx: StageContext) -> None:
    """A PET-only study fails with ``NO_CT`` when the model reads CT (nothing else does)."""
    if not ctx.store.has_array(ctx.key, "ct"):
        raise StageError("NO_CT", f"study {ctx.key} has no CT ({ctx.attrs.get('ct_reason') or 'none ingested'}): "
                                  "the nnU-Net model takes a CT channel")


def _ct(ctx: StageContext) -> np.ndarray:
    """The study's CT on the PET grid."""
    _check_ct(ctx)
    return ctx.store.read_array(ctx.key, "ct")


def _pet(ctx: StageContext, key: str, name: str = "pet") -> np.ndarray:
    return clipped_pet(ctx.store, key, name, suv_clip=ctx.config.suv_clip)


def _run(ctx: StageContext, opts: dict[str, Any], binding: ModelBinding,
         inputs: dict[str, Callable[[], np.ndarray]]) -> np.ndarray:
    """The lesion mask (uint8 0/1) of the model, its channels read in its own order from ``inputs``."""
    arrays: dict[str, np.ndarray] = {}
    for role in binding.roles:  # only the inputs the model reads (a PET-only model needs no CT)
        if role not in arrays:
            arrays[role] = inputs[role]()
    model = nnunet.get_model(opts["folder"], folds=opts["folds"], device=opts["device"])
    seg = model.predict([arrays[r] for r in binding.roles], ctx.spacing, channel_names=binding.channels,
                        tta=opts["tta"], tile_step=opts["tile_step"])
    return binding.lesion_mask(seg)


def _summary(ctx: StageContext, opts: dict[str, Any], binding: ModelBinding, mask: np.ndarray) -> dict[str, Any]:
    model = nnunet.get_model(opts["folder"], folds=opts["folds"], device=opts["device"])
    voxels = int(np.count_nonzero(mask))
    out = {"model": opts["folder"], "folds": list(model.folds), "device": opts["device"], "tta": opts["tta"],
           "tile_step": opts["tile_step"], **binding.to_dict(), "voxels": voxels,
           "volume_ml": voxels * float(np.prod(ctx.spacing)) / 1000}
    if {"pet", "baseline_pet"} & set(binding.roles):
        out["suv_clip"] = ctx.config.suv_clip  # the run's clip, whatever the model was trained on
    return out


_SEGMENT_PARAMS = ("suv.clip", "segment.folds", "segment.fold_map", "segment.tta", "segment.tile_step",
                   "segment.device", "segment.channel_map", "segment.lesion_label")


@register_stage("segment_bl", params=("segment.model_bl", *_SEGMENT_PARAMS), gpu=True)
def segment_bl_stage(ctx: StageContext) -> StageOutput:
    """U-Net_BL on this study's PET (clipped SUVbw) and/or CT, as its model names them -> ``seg/nnunet_bl``."""
    opts = _options(ctx, "model_bl")
    binding = bind_stage_model(ctx.config, "segment_bl")
    mask = _run(ctx, opts, binding, {"pet": lambda: _pet(ctx, ctx.key), "ct": lambda: _ct(ctx)})
    return StageOutput(arrays={"seg/nnunet_bl": mask}, summary=_summary(ctx, opts, binding, mask))


def _baseline_mask(ctx: StageContext, reg: dict[str, Any]) -> tuple[np.ndarray, str]:
    store, base = ctx.store, ctx.baseline_key
    choice = ctx.config.segment.fu_mask_source
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
                params=("segment.model_fu", *_SEGMENT_PARAMS, "segment.fu_mask_source"), gpu=True)
def segment_fu_stage(ctx: StageContext) -> StageOutput:
    """U-Net_FU on FU PET, FU CT, registered BL PET and BL mask (as its model names them) -> ``seg/nnunet_fu``."""
    if ctx.baseline_key is None:
        raise StageError("NO_BASELINE", f"follow-up {ctx.key!r} has no baseline study: U-Net_FU cannot run")
    opts = _options(ctx, "model_fu")
    binding = bind_stage_model(ctx.config, "segment_fu")
    if "ct" in binding.roles:
        _check_ct(ctx)  # before the registration check, as a PET-only study's reason
    rec = ctx.store.stage_record(ctx.key, "register")
    if not rec or rec.get("status") != "committed" or not ctx.store.has_array(ctx.key, "reg/baseline_pet"):
        raise StageError("NO_REGISTRATION", f"follow-up {ctx.key!r} has no committed registration")
    source: list[str] = []

    def baseline_mask() -> np.ndarray:
        mask, how = _baseline_mask(ctx, rec.get("summary") or {})
        source.append(how)
        return (mask > 0).astype(np.float32)

    mask = _run(ctx, opts, binding, {"pet": lambda: _pet(ctx, ctx.key), "ct": lambda: _ct(ctx),
                                     "baseline_pet": lambda: _pet(ctx, ctx.key, "reg/baseline_pet"),
                                     "baseline_mask": baseline_mask})
    return StageOutput(arrays={"seg/nnunet_fu": mask},
                       summary={**_summary(ctx, opts, binding, mask),
                                "baseline_mask_source": source[0] if source else None})
