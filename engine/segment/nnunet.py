"""nnU-Net v2 inference adapter: one trained model folder, one study at a time, in-process.

The only module of petcohort that imports ``nnunetv2`` (lazily, inside the
worker). A *model folder* is nnU-Net's trained-model output folder
(``<results>/DatasetXXX_Name/<Trainer>__<Plans>__<configuration>``) holding
``dataset.json``, ``plans.json`` and ``fold_<k>/<checkpoint>``; it is given by
path, so no ``nnUNet_raw/preprocessed/results`` variables are needed (nnU-Net
2.8 reads them lazily and only for training and planning).

Why not ``nnUNetPredictor.initialize_from_trained_model_folder``: it looks the
trainer class up by name by importing every trainer module of nnunetv2
(including the Primus/EVA ones that need ``timm``, which we do not install);
the network is instead built here from the plans with the base trainer's
``build_network_architecture`` (the same builder every trainer that does not
override the architecture uses) and handed to ``manual_initialization``.
Predictions go through ``predict_single_npy_array`` (no process pools: it
preprocesses in the calling thread), so the adapter is safe inside Dask workers.
The loaded predictor is cached per process, keyed by folder, folds, device
and checkpoint. Every checkpoint is checked tensor by tensor against the
network the plans describe (``MODEL_ARCHITECTURE_MISMATCH``), also by
:func:`check_model`, which a run calls once before any study. Which study
array feeds which channel is decided by name, without nnU-Net, in
:mod:`petcohort.engine.segment.nnunet_model` (:func:`bind_model`).

Sources: nnU-Net v2 ``nnunetv2/inference/predict_from_raw_data.py`` and
``documentation/how_to_use_nnunet.md`` ("Run inference" / Python API).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from petcohort.engine.allocator import tune_malloc
from petcohort.engine.errors import InputError, SegmentationError
from petcohort.engine.segment.nnunet_model import (
    ModelBinding,
    ModelInfo,
    TrainPlan,
    bind_model,
    load_json,
    read_model_info,
)

__all__ = [
    "ModelBinding",
    "ModelInfo",
    "NnUNetModel",
    "TrainPlan",
    "bind_model",
    "check_model",
    "clear_cache",
    "default_device",
    "get_model",
    "nnunet_paths",
    "plan_and_preprocess",
    "predict",
    "read_model_info",
    "train_fold",
]

log = logging.getLogger(__name__)

_CACHE: dict[tuple, NnUNetModel] = {}
_LOCK = threading.Lock()


def _device(name: str):
    import torch

    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise SegmentationError("NO_GPU", "device='cuda' requested but torch sees no CUDA device")
        return torch.device("cuda")
    raise InputError("BAD_VALUE", f"device must be 'cpu' or 'cuda', got {name!r}")


def default_device() -> str:
    """``"cuda"`` when torch sees a CUDA device, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _wanted_folds(info: ModelInfo, folds: Sequence[int | str] | None, checkpoint: str) -> tuple[str, ...]:
    wanted = info.folds if folds is None else tuple(str(f) for f in folds)
    missing = [f for f in wanted if f not in info.folds]
    if missing or not wanted:
        raise SegmentationError("MODEL_INCOMPLETE", f"folds {list(wanted)} requested, but {info.folder} has "
                                                    f"{checkpoint} only for folds {list(info.folds)}")
    return wanted


def _read_checkpoint(path: str) -> dict[str, Any]:
    """One fold's checkpoint, checked to be nnU-Net's (weights + the configuration it was trained with)."""
    import torch

    try:
        # nnU-Net checkpoints hold plain Python objects next to the tensors, so
        # weights_only=False as nnU-Net itself loads them: only load folders you trust.
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a truncated/corrupt file
        raise SegmentationError("MODEL_INCOMPLETE", f"cannot read checkpoint {path}: {exc}") from None
    if not isinstance(ckpt, dict) or "network_weights" not in ckpt or "configuration" not in \
            ckpt.get("init_args", {}):
        raise SegmentationError("MODEL_INCOMPLETE", f"{path} is not an nnU-Net checkpoint "
                                                    f"(network_weights / init_args.configuration missing)")
    return ckpt


def _build_network(folder: str, configuration: str):
    """(network, plans manager, configuration manager, dataset.json) as plans.json describes them.

    The base trainer's builder, as every trainer that keeps nnU-Net's architecture
    uses; input channels from dataset.json, outputs from its labels.
    """
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import (
        determine_num_input_channels,
    )
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    ds = load_json(os.path.join(folder, "dataset.json"), "dataset.json")
    try:
        plans_manager = PlansManager(load_json(os.path.join(folder, "plans.json"), "plans.json"))
        cm = plans_manager.get_configuration(configuration)
        n_in = determine_num_input_channels(plans_manager, cm, ds)
        n_out = plans_manager.get_label_manager(ds).num_segmentation_heads
        network = nnUNetTrainer.build_network_architecture(plans_manager, cm, n_in, n_out,
                                                           enable_deep_supervision=False)
    except SegmentationError:
        raise
    except Exception as exc:  # noqa: BLE001 - a foreign plans.json fails in nnU-Net with many types
        raise SegmentationError("MODEL_ARCHITECTURE_MISMATCH",
                                f"cannot build the {configuration!r} network that plans.json describes: "
                                f"{type(exc).__name__}: {exc}") from None
    return network, plans_manager, cm, ds


def _check_weights(network, ckpt: dict[str, Any], where: str) -> None:
    """Raise ``MODEL_ARCHITECTURE_MISMATCH`` unless the checkpoint's tensors fit ``network`` key by key.

    A checkpoint of a trainer that changes the architecture (e.g. a residual
    encoder, a transformer) or trained for other channels/labels differs in
    names or shapes; ``load_state_dict`` would fail deep inside a task.
    """
    want = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    have = {k: tuple(getattr(v, "shape", ())) for k, v in ckpt["network_weights"].items()}
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    shapes = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    if missing or extra or shapes:
        first = shapes[0] if shapes else None
        example = (f"; e.g. {first}: {list(have[first])} in the checkpoint, {list(want[first])} from the plans"
                   if first else f"; e.g. {(missing or extra)[0]!r}")
        raise SegmentationError(
            "MODEL_ARCHITECTURE_MISMATCH",
            f"{where} (trainer {ckpt.get('trainer_name')!r}) does not fit the network plans.json and "
            f"dataset.json describe: {len(missing)} tensors missing, {len(extra)} unexpected, {len(shapes)} of "
            f"another shape{example}. petcohort builds nnU-Net's plain architecture from the plans: trainers "
            f"that change it are not supported")


def check_model(folder: str | os.PathLike, *, folds: Sequence[int | str] | None = None,
                checkpoint: str = "checkpoint_final.pth") -> ModelInfo:
    """Check that a model folder loads, without keeping it: files, folds and every fold's architecture.

    Cheaper than :func:`get_model` (no predictor; one fold in memory at a
    time): for checking a run's models once, before any study.

    Raises
    ------
    SegmentationError
        ``MODEL_INCOMPLETE`` (folder, dataset.json, plans.json, a fold or its
        checkpoint missing or unreadable), ``MODEL_ARCHITECTURE_MISMATCH`` (a
        checkpoint that does not fit the plans' network), ``NNUNET_NOT_INSTALLED``.
    """
    info = read_model_info(folder, checkpoint=checkpoint)
    network = configuration = None
    try:
        for f in _wanted_folds(info, folds, checkpoint):
            where = f"fold_{f}/{checkpoint}"
            ckpt = _read_checkpoint(os.path.join(info.folder, where))
            if network is None or ckpt["init_args"]["configuration"] != configuration:
                configuration = ckpt["init_args"]["configuration"]
                network = _build_network(info.folder, configuration)[0]
            _check_weights(network, ckpt, where)
            del ckpt
    except ImportError as exc:
        raise SegmentationError("NNUNET_NOT_INSTALLED", f"cannot check the model: {exc} (install nnU-Net with "
                                                        f"scripts/install_seg.sh)") from None
    return info


class NnUNetModel:
    """A loaded fold ensemble of one model folder (use :func:`get_model` to share it per process)."""

    def __init__(self, folder: str | os.PathLike, *, folds: Sequence[int | str] | None = None,
                 device: str = "cpu", checkpoint: str = "checkpoint_final.pth") -> None:
        self.info = read_model_info(folder, checkpoint=checkpoint)
        self.folds = _wanted_folds(self.info, folds, checkpoint)
        self.device = device
        self._lock = threading.Lock()  # one prediction at a time: the network's weights are swapped per fold
        self._predictor = self._load(checkpoint)

    def _load(self, checkpoint: str):
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        dev = _device(self.device)
        if dev.type == "cpu":
            tune_malloc()
        folder = self.info.folder
        ckpts = {f: _read_checkpoint(os.path.join(folder, f"fold_{f}", checkpoint)) for f in self.folds}
        first = ckpts[self.folds[0]]
        configuration = first["init_args"]["configuration"]
        network, plans_manager, cm, ds = _build_network(folder, configuration)
        for f, ckpt in ckpts.items():
            _check_weights(network, ckpt, f"fold_{f}/{checkpoint}")
        params = [ckpt["network_weights"] for ckpt in ckpts.values()]
        network.load_state_dict(params[0])
        out = io.StringIO()
        with contextlib.redirect_stdout(out):  # nnU-Net prints a note when the device is the CPU
            predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                        perform_everything_on_device=dev.type == "cuda", device=dev,
                                        verbose=False, verbose_preprocessing=False, allow_tqdm=False)
            predictor.manual_initialization(network, plans_manager, cm, params, ds, first["trainer_name"],
                                            first.get("inference_allowed_mirroring_axes"))
        if out.getvalue().strip():
            log.debug("nnU-Net: %s", out.getvalue().strip())
        log.info("loaded nnU-Net model (%s, folds %s, %s)", configuration, ",".join(self.folds), self.device)
        return predictor

    def check_channels(self, count: int, names: Sequence[str] | None = None) -> None:
        """Raise ``MODEL_CHANNELS_MISMATCH`` unless ``count``/``names`` match dataset.json's channel_names."""
        expected = list(self.info.channel_names)
        given = list(names) if names is not None else None
        if count != len(expected) or (given is not None and [g.lower() for g in given] != [e.lower()
                                                                                         for e in expected]):
            raise SegmentationError(
                "MODEL_CHANNELS_MISMATCH",
                f"model {self.info.folder} expects {len(expected)} channels {expected} (dataset.json channel_names), "
                f"got {count} channels" + (f" {given}" if given is not None else ""))

    def predict(self, channels: Sequence[np.ndarray], spacing: Sequence[float], *,
                channel_names: Sequence[str] | None = None, tta: bool = True, tile_step: float = 0.5) -> np.ndarray:
        """Segment one study.

        Parameters
        ----------
        channels : list of (Z, Y, X) ndarray  in the order of the model's ``channel_names``
            (e.g. PET SUVbw clipped, CT HU); all on one grid
        spacing : (3,) floats  voxel size (mm) in array order [sz, sy, sx]
        channel_names : list of str, optional  names of the given channels, checked against dataset.json
        tta : bool  mirroring test-time augmentation (nnU-Net default on)
        tile_step : float in (0, 1]  sliding-window step as a fraction of the patch size

        Returns
        -------
        (Z, Y, X) ndarray of uint8  label map (0 background, 1 lesion for a binary model)
        """
        self.check_channels(len(channels), channel_names)
        shapes = {np.shape(c) for c in channels}
        if len(shapes) != 1 or len(next(iter(shapes))) != 3:
            raise InputError("GRID_MISMATCH", f"channels must be (Z, Y, X) arrays of one shape, got {sorted(shapes)}")
        spacing = [float(s) for s in spacing]
        if len(spacing) != 3 or min(spacing) <= 0:
            raise InputError("BAD_GEOMETRY", f"spacing must be 3 positive mm values [z, y, x], got {spacing!r}")
        if not 0 < tile_step <= 1:
            raise InputError("BAD_VALUE", f"tile_step must be in (0, 1], got {tile_step!r}")
        data = np.stack([np.asarray(c, np.float32) for c in channels])
        if not np.isfinite(data).all():
            raise InputError("IMAGE_NOT_FINITE", "an input channel contains NaN or infinite values")
        # an empty or constant PET carries nothing to segment and z-scores to garbage (nnU-Net
        # divides by its standard deviation); CT (fixed-window normalisation) and the no-normalisation
        # baseline-mask channel may be constant (a CT crop inside soft tissue; no baseline lesion)
        norms = self.info.normalization or ("ZScoreNormalization",) * len(data)
        for name, norm, chan in zip(self.info.channel_names, norms, data):
            if norm == "ZScoreNormalization" and chan.min() == chan.max():
                raise InputError("CONSTANT_IMAGE", f"input channel {name!r} is constant ({float(chan.min()):g} "
                                                   f"everywhere): an empty or blank image cannot be segmented")
        with self._lock:
            self._predictor.use_mirroring = bool(tta)
            self._predictor.tile_step_size = float(tile_step)
            seg = self._predictor.predict_single_npy_array(data, {"spacing": spacing}, None, None, False)
        seg = np.asarray(seg)
        if seg.shape != data.shape[1:]:
            raise SegmentationError("PREDICTION_SHAPE", f"nnU-Net returned shape {seg.shape}, "
                                                        f"expected {data.shape[1:]}")
        return seg.astype(np.uint8)


def get_model(folder: str | os.PathLike, *, folds: Sequence[int | str] | None = None, device: str = "cpu",
              checkpoint: str = "checkpoint_final.pth") -> NnUNetModel:
    """The process-wide cached :class:`NnUNetModel` for (folder, folds, device, checkpoint)."""
    key = (os.path.realpath(os.fspath(folder)), None if folds is None else tuple(str(f) for f in folds),
           device, checkpoint)
    with _LOCK:
        model = _CACHE.get(key)
        if model is None:
            model = NnUNetModel(folder, folds=folds, device=device, checkpoint=checkpoint)
            _CACHE[key] = model
    return model


def clear_cache() -> None:
    """Forget every cached model (tests; a worker that must free GPU memory)."""
    with _LOCK:
        _CACHE.clear()


def predict(folder: str | os.PathLike, channels: Sequence[np.ndarray], spacing: Sequence[float], *,
            channel_names: Sequence[str] | None = None, folds: Sequence[int | str] | None = None,
            device: str = "cpu", tta: bool = True, tile_step: float = 0.5,
            checkpoint: str = "checkpoint_final.pth") -> np.ndarray:
    """Segment one study with the cached model of ``folder`` (see :meth:`NnUNetModel.predict`)."""
    model = get_model(folder, folds=folds, device=device, checkpoint=checkpoint)
    return model.predict(channels, spacing, channel_names=channel_names, tta=tta, tile_step=tile_step)


# --------------------------------------------------------------------------------------------------
# Training: nnU-Net's own fingerprinting, planning, preprocessing and trainer, with explicit paths
# and a small, explicit network (features, patch, batch) so tiny models train on CPU.
# --------------------------------------------------------------------------------------------------

class _LogStream(io.TextIOBase):
    """A text stream that sends each printed line to this module's logger (nnU-Net prints its progress)."""

    def __init__(self, level: int) -> None:
        self.level = level
        self._buf = ""

    def write(self, s: str) -> int:
        self._buf += s
        *lines, self._buf = self._buf.split("\n")
        for line in lines:
            if line.strip():
                log.log(self.level, "nnU-Net: %s", line.rstrip())
        return len(s)


@contextlib.contextmanager
def _environ(values: dict[str, str]):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def nnunet_paths(raw: str, preprocessed: str, results: str):
    """Set the folders nnU-Net's planning/training read from the environment, for this block only.

    nnU-Net 2.8 reads ``nnUNet_raw/preprocessed/results`` lazily, so setting
    them around the calls (and restoring them after) is enough; ``nnUNet_compile=f``
    skips torch.compile (slow to start, no gain for tiny CPU networks).
    """
    with _environ({"nnUNet_raw": raw, "nnUNet_preprocessed": preprocessed, "nnUNet_results": results,
                   "nnUNet_compile": "f"}):
        yield


def plan_and_preprocess(dataset_id: int, plan: TrainPlan, *, configuration: str = "3d_fullres",
                        plans_name: str = "PetCohortPlans") -> dict[str, Any]:
    """Fingerprint, plan and preprocess one raw dataset (inside :func:`nnunet_paths`).

    nnU-Net's planner runs first; its ``configuration`` is then rewritten with
    the plan's features/patch/batch, the topology recomputed for the new patch
    with nnU-Net's own ``get_pool_and_conv_props``; other configurations are
    dropped. Fingerprinting and preprocessing use nnU-Net's one-process pools
    (its dataset integrity check, another pool, is skipped: the export writes
    every channel and label on one grid).
    Returns the plans written.
    """
    from nnunetv2.experiment_planning.experiment_planners.network_topology import (
        get_pool_and_conv_props,
    )
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiment_dataset,
        preprocess_dataset,
    )
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    out = _LogStream(logging.DEBUG)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out):
        extract_fingerprint_dataset(dataset_id, num_processes=1, check_dataset_integrity=False, clean=True,
                                    verbose=False, show_progress_bar=False)
        # a coarser target spacing makes training and inference cheaper (nnU-Net resamples
        # every input to it); the planner takes it in the images' array order (z, y, x), before
        # its own axis transpose
        plan_experiment_dataset(dataset_id, overwrite_plans_name=plans_name,
                                overwrite_target_spacing=None if plan.target_spacing is None
                                else [float(v) for v in plan.target_spacing])
    log.info("nnU-Net fingerprint + plan: %.1f s", time.perf_counter() - t0)
    name = convert_id_to_dataset_name(dataset_id)
    plans_file = os.path.join(os.environ["nnUNet_preprocessed"], name, plans_name + ".json")
    plans = load_json(plans_file, "plans")
    cfg = plans["configurations"][configuration]
    spacing = cfg["spacing"]
    patch = list(cfg["patch_size"]) if plan.patch_size is None else \
        [min(p, int(m)) for p, m in zip(plan.patch_size, cfg["median_image_size_in_voxels"])]
    _, strides, kernels, patch, _ = get_pool_and_conv_props(spacing, patch, 4, 999999)
    n = len(strides)
    arch = cfg["architecture"]["arch_kwargs"]
    arch.update(n_stages=n, kernel_sizes=kernels, strides=strides,
                features_per_stage=[min(plan.max_features, plan.base_features * 2 ** i) for i in range(n)],
                n_conv_per_stage=[2] * n, n_conv_per_stage_decoder=[2] * (n - 1))
    cfg.update(patch_size=[int(p) for p in patch], batch_size=plan.batch_size)
    plans["configurations"] = {configuration: cfg}
    with open(plans_file, "w", encoding="utf-8") as fh:
        json.dump(plans, fh, indent=1)
    t1 = time.perf_counter()
    with contextlib.redirect_stdout(out):
        preprocess_dataset(dataset_id, plans_name, configurations=(configuration,), num_processes=(1,),
                           verbose=False, show_progress_bar=False)
    log.info("nnU-Net preprocessing: %.1f s (total %.1f s)", time.perf_counter() - t1, time.perf_counter() - t0)
    return plans


def train_fold(dataset_id: int, fold: int, plan: TrainPlan, *, configuration: str = "3d_fullres",
               plans_name: str = "PetCohortPlans", device: str = "cpu", seed: int = 0) -> str:
    """Train one fold with nnU-Net's ``nnUNetTrainer`` (inside :func:`nnunet_paths`); returns the model folder.

    The schedule (epochs, iterations, learning rate) is set on the trainer
    instance before training: the architecture stays nnU-Net's plain one, so
    the folder is loadable by stock nnU-Net tools (trainer name ``nnUNetTrainer``).
    """
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    name = convert_id_to_dataset_name(dataset_id)
    pre = os.path.join(os.environ["nnUNet_preprocessed"], name)
    plans = load_json(os.path.join(pre, plans_name + ".json"), "plans")
    plans["continue_training"] = False  # nnU-Net 2.8's run_training entry point sets this key; the trainer pops it
    ds = load_json(os.path.join(pre, "dataset.json"), "dataset.json")
    torch.manual_seed(seed)
    np.random.seed(seed)  # nnU-Net's data loaders sample patches with numpy's global RNG
    out = _LogStream(logging.INFO)
    # nnUNet_n_proc_DA=0: data augmentation in this process (nnU-Net's SingleThreadedAugmenter),
    # no background augmentation processes.
    with contextlib.redirect_stdout(out), _environ({"nnUNet_n_proc_DA": "0"}):
        trainer = nnUNetTrainer(plans=plans, configuration=configuration, fold=fold, dataset_json=ds,
                                device=_device(device))
        trainer.num_epochs = plan.epochs
        trainer.num_iterations_per_epoch = plan.iterations_per_epoch
        trainer.num_val_iterations_per_epoch = plan.val_iterations_per_epoch
        trainer.initial_lr = plan.initial_lr
        trainer.run_training()
    return trainer.output_folder_base
