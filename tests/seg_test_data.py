"""Tiny PET/CT patients and a tiny trained nnU-Net model for the segmentation tests.

Imported by tests/engine/test_nnunet_adapter.py, tests/storage/test_nnunet_export.py
and tests/pipelines/test_segment_stages.py (tests/ is on sys.path through its conftest).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

SHAPE = (20, 28, 28)
SPACING = [4.0, 4.0, 4.0]


def patient_arrays(rng: np.random.Generator, *, shift_vox=(0, 0, 0), lesion_suv=6.0, lesions=None):
    """(pet float32 SUVbw, ct int16 HU, manual uint8, lesion centres) of one small torso."""
    z, y, x = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    z, y, x = z - shift_vox[0], y - shift_vox[1], x - shift_vox[2]
    body = ((y - 14) / 11.0) ** 2 + ((x - 14) / 12.0) ** 2 <= 1.0
    pet = np.where(body, 1.0, 0.05) + rng.normal(0, 0.08, SHAPE)
    ct = np.where(body, 40, -1000).astype(np.int16)
    manual = np.zeros(SHAPE, np.uint8)
    if lesions is None:
        lesions = [(int(rng.integers(5, 15)), int(rng.integers(8, 20)), int(rng.integers(8, 20)),
                    float(rng.uniform(1.6, 2.6))) for _ in range(int(rng.integers(1, 3)))]
    for cz, cy, cx, r in lesions:
        ball = (z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= r * r
        manual[ball] = 1
        pet[ball] = lesion_suv + rng.normal(0, 0.3, int(ball.sum()))
    return pet.astype(np.float32), ct, manual, lesions


def make_store(url: str, *, patients: int = 5, seed: int = 0, followups: int = 1, sites: int = 2):
    """A CohortStore with ``patients`` baselines (+ ``followups`` each) and manual masks."""
    from petcohort.storage.store import CohortStore

    rng = np.random.default_rng(seed)
    store = CohortStore.create(url)
    for p in range(patients):
        pkey = f"P-{p:010x}"
        lesions = None
        for t in range(1 + followups):
            pet, ct, manual, lesions = patient_arrays(rng, shift_vox=(0, 0, t), lesion_suv=6.0 / (1 + t),
                                                      lesions=lesions)
            key = f"{pkey}-T{t}"
            store.add_study(key, {"patient": pkey, "study": key, "timepoint": t, "days_since_baseline": 45 * t,
                                  "site": f"S{p % sites}", "spacing": SPACING, "origin": [0.0, 0.0, 0.0]})
            store.write_arrays(key, {"pet": pet, "ct": ct, "seg/manual": manual})
    return store


def train_tiny_model(base: Path, channels=("PET", "CT")) -> str:
    """Train a tiny 2-channel nnU-Net (1 fold, a few iterations) once into ``base``; returns its model folder."""
    import json

    marker = base / "model_folder.txt"
    if marker.exists():
        return marker.read_text()
    from petcohort.engine.segment.nnunet import TrainPlan
    from petcohort.pipelines.train import train
    from petcohort.storage.nnunet_export import export_nnunet

    store = make_store(f"memory://tiny-train-{base.name}", patients=5, followups=0)
    export_nnunet(store, base / "raw", dataset_id_bl=901, dataset_id_fu=902)
    plan = TrainPlan(base_features=4, max_features=16, patch_size=(16, 16, 16), batch_size=2, epochs=2,
                     iterations_per_epoch=4, val_iterations_per_epoch=1)
    summary = train(base / "raw", base / "work", dataset_id=901, folds=(0,), plan=plan, device="cpu")
    (base / "summary.json").write_text(json.dumps(summary, default=str))
    marker.write_text(summary["model_folder"])
    return summary["model_folder"]


def _plans(dataset: str, n_channels: int, norms: list[str]) -> dict:
    """A minimal nnU-Net 2.8 plans.json (3d_fullres, 3 stages, features 4-16, patch 16^3) for SPACING."""
    conv3 = [[3, 3, 3]] * 3
    return {
        "dataset_name": dataset, "plans_name": "PetCohortPlans",
        "original_median_spacing_after_transp": SPACING, "original_median_shape_after_transp": list(SHAPE),
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            str(i): {"max": 1000.0, "mean": 40.0, "median": 40.0, "min": -1000.0, "percentile_00_5": -1000.0,
                     "percentile_99_5": 1000.0, "std": 100.0} for i in range(n_channels)},
        "configurations": {"3d_fullres": {
            "data_identifier": "PetCohortPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": [16, 16, 16], "median_image_size_in_voxels": list(SHAPE),
            "spacing": SPACING, "normalization_schemes": norms, "use_mask_for_norm": [False] * n_channels,
            "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
            "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                   "force_separate_z": None},
            "architecture": {
                "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                "arch_kwargs": {"n_stages": 3, "features_per_stage": [4, 8, 16],
                                "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": conv3,
                                "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]], "n_conv_per_stage": [2, 2, 2],
                                "n_conv_per_stage_decoder": [2, 2], "conv_bias": True,
                                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                                "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                                "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                                "nonlin_kwargs": {"inplace": True}},
                "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
            "batch_dice": False}},
    }


_NORM = {"ct": "CTNormalization", "nonorm": "NoNormalization"}


def make_model_folder(base: Path, channels=("PET", "CT"), *, folds=(0, 1), seed: int = 0) -> str:
    """An nnU-Net model folder with random (untrained) weights: exercises the adapter without training."""
    import json

    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = base / "Dataset900_Tiny" / "nnUNetTrainer__PetCohortPlans__3d_fullres"
    folder.mkdir(parents=True)
    ds = {"channel_names": {str(i): c for i, c in enumerate(channels)},
          "labels": {"background": 0, "lesion": 1}, "numTraining": 1, "file_ending": ".nii.gz"}
    plans = _plans("Dataset900_Tiny", len(channels), [_NORM.get(c.lower(), "ZScoreNormalization") for c in channels])
    (folder / "dataset.json").write_text(json.dumps(ds))
    (folder / "plans.json").write_text(json.dumps(plans))
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    for f in folds:
        torch.manual_seed(seed + f)
        net = nnUNetTrainer.build_network_architecture(pm, cm, len(channels), 2, enable_deep_supervision=False)
        (folder / f"fold_{f}").mkdir()
        torch.save({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer",
                    "init_args": {"configuration": "3d_fullres"}, "inference_allowed_mirroring_axes": (0, 1, 2)},
                   folder / f"fold_{f}" / "checkpoint_final.pth")
    return str(folder)
