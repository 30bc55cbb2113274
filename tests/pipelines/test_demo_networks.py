"""The shipped demo networks (models/demo) segment a held-out synthetic patient through the stages.

Guards the committed weights: a network that collapsed to background (as a first U-Net_FU did; see
models/README.md) or a model folder that no longer loads fails here, not in `make demo`.
"""
from __future__ import annotations

import os

import pytest

pytest.importorskip("nnunetv2", reason="nnunetv2 is not installed: run scripts/install_seg.sh .venv")
pytest.importorskip("ants", reason="antspyx is not installed: run scripts/install_seg.sh .venv")

from petcohort.engine.kernels.metrics import dice
from petcohort.pipelines.config import RunConfig
from petcohort.pipelines.demo import demo_models
from petcohort.pipelines.stage_register import register_stage_fn
from petcohort.pipelines.stage_segment import segment_bl_stage, segment_fu_stage
from petcohort.pipelines.stages import StageContext
from petcohort.pipelines.synthetic import synthesize
from petcohort.storage.store import CohortStore

DEMO = os.path.join(os.path.dirname(__file__), "..", "..", "models", "demo")


@pytest.mark.slow
def test_demo_networks_find_lesions_of_a_held_out_patient(tmp_path):
    extra = demo_models(DEMO)
    if not extra:
        pytest.skip("demo models not present")
    url = str(tmp_path / "cohort.zarr")
    synthesize(url, patients=1, sites=1, seed=4242, mip_dir=tmp_path / "mips")   # not a training patient (seed 1000)
    store = CohortStore.open(url)
    keys = store.study_keys()
    base, follow = keys[0], keys[1]
    config = RunConfig(extra=extra)

    def run(stage, fn, key):
        ctx = StageContext(store=store, key=key, attrs=store.study_attrs(key), config=config,
                           baseline_key=None if key == base else base)
        out = fn(ctx)
        store.commit_stage(key, stage, arrays=out.arrays, record={"status": "committed", "summary": out.summary})
        return out

    bl = run("segment_bl", segment_bl_stage, base)
    truth = store.read_array(base, "seg/manual") > 0
    d_bl = dice(truth, bl.arrays["seg/nnunet_bl"] > 0)
    assert bl.summary["voxels"] > 0 and d_bl > 0.2
    run("register", register_stage_fn, follow)
    fu = run("segment_fu", segment_fu_stage, follow)
    assert fu.summary["baseline_mask_source"] == "manual"
    # U-Net_FU: not collapsed to background, and what it segments is hot. (Its accuracy is Table 1 of
    # `make demo`; this patient's follow-ups are a partial response with faint lesions of SUV ~2, where one
    # patient's Dice says little.)
    pred = fu.arrays["seg/nnunet_fu"] > 0
    pet = store.read_array(follow, "pet")
    assert fu.summary["voxels"] > 0 and pred.sum() == fu.summary["voxels"]
    assert float(pet[pred].mean()) > 3.0 * float(pet.mean())
