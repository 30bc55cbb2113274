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
