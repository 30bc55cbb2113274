"""``petcohort demo`` finds its nnU-Net networks (or says why it runs without them)."""
from __future__ import annotations

import logging

from petcohort.pipelines.demo import demo_models


def _model(root, dataset):
    folder = root / dataset / "nnUNetTrainer__PetCohortPlans__3d_fullres"
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text("{}")
    return folder


def test_both_networks_found(tmp_path, monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())   # nnunetv2 and ants "installed"
    bl, fu = _model(tmp_path, "Dataset501_PetCohortBL"), _model(tmp_path, "Dataset502_PetCohortFU")
    extra = demo_models(tmp_path)
    assert extra == {"model_bl": str(bl), "model_fu": str(fu), "tta": False, "tile_step": extra["tile_step"]}
    assert 0 < extra["tile_step"] <= 1


def test_missing_network_or_package_runs_without_nnunet(tmp_path, monkeypatch, caplog):
    import importlib.util

    caplog.set_level(logging.WARNING)
    assert demo_models(None) == {}
    _model(tmp_path, "Dataset501_PetCohortBL")
    assert demo_models(tmp_path) == {}                                        # no U-Net_FU
    assert "nnU-Net stages skipped" in caplog.text
    _model(tmp_path, "Dataset502_PetCohortFU")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)       # nnU-Net not installed
    caplog.clear()
    assert demo_models(tmp_path) == {}
    assert "not installed" in caplog.text
