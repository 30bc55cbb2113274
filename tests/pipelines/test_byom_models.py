"""Bring your own nnU-Net model: channels bound by name in the model's own order, the lesion label by name,
and a model that cannot run refused once, before any study (issue 13, item 1).

The binding tests need no nnU-Net; the others copy a model folder (the shipped U-Net_BL, or a random-weight
one from seg_test_data) with renamed and reordered channels: nnU-Net feeds channels by position and takes each
channel's normalisation from plans.json by position, so a reordered copy permutes plans.json's per-channel
entries and the first convolution's input channels, and must then segment exactly as the original.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from petcohort.engine.errors import ConfigError, PetCohortError, SegmentationError
from petcohort.engine.segment.nnunet_model import ModelBinding, bind_channels, pick_lesion_label
from petcohort.pipelines.config import RunConfig, load_config, parse_overrides, to_yaml
from petcohort.storage.nnunet_export import BL_CHANNELS, FU_CHANNELS

DEMO_BL = Path(__file__).resolve().parents[2] / "models" / "demo" / "Dataset501_PetCohortBL" / \
    "nnUNetTrainer__PetCohortPlans__3d_fullres"
BL, FU = ("pet", "ct"), ("pet", "ct", "baseline_pet", "baseline_mask")


# -- binding (no nnU-Net) --------------------------------------------------------------------------
@pytest.mark.parametrize(("names", "roles"), [
    (BL_CHANNELS, BL), (FU_CHANNELS, FU),                               # petcohort's own networks
    (("SUV", "CTres"), BL), (("CTres", "SUV"), ("ct", "pet")),         # autoPET-style, in either order
    (("PT", "CT_HU"), BL), (("suvBW", "ct-hu"), BL), (("CT",), ("ct",)), (("PET",), ("pet",)),
    (("CT", "SUV", "SUV_BL", "mask_BL"), ("ct", "pet", "baseline_pet", "baseline_mask")),
])
def test_channels_bound_by_known_names_in_the_models_order(names, roles):
    assert bind_channels(names, FU) == roles


def test_explicit_map_for_other_names():
    assert bind_channels(("img0", "img1"), BL, {"IMG0": "ct", "img1": "pet"}) == ("ct", "pet")
    assert bind_channels(("PET", "CT"), BL, {"PET": "ct", "CT": "pet"}) == ("ct", "pet")      # the map wins
    assert bind_channels(("PET", "SUV"), BL, {"SUV": "pet"}) == ("pet", "pet")               # explicit: allowed


@pytest.mark.parametrize(("names", "available", "fragment"), [
    (("PET", "FDG"), BL, "'FDG' matches no known input"),
    (FU_CHANNELS, BL, "'PET_BL' is the baseline_pet input, which this network is not given"),
    (("PET", "SUV"), BL, "all read as pet (ambiguous)"),
])
def test_unbound_channels_are_named(names, available, fragment):
    with pytest.raises(SegmentationError) as exc:
        bind_channels(names, available)
    assert exc.value.reason == "MODEL_CHANNELS_MISMATCH" and fragment in exc.value.message
    assert str(list(names)) in exc.value.message


@pytest.mark.parametrize(("labels", "name", "picked"), [
    ({"background": 0, "lesion": 1}, None, ("lesion", (1,))),
    ({"background": 0, "Tumour": 1}, None, ("Tumour", (1,))),
    ({"background": 0, "FDG avid": 1}, None, ("FDG avid", (1,))),              # the only foreground label
    ({"background": 0, "liver": 1, "lesions": 2}, None, ("lesions", (2,))),   # multi-class, named
    ({"background": 0, "liver": 1, "spleen": 2}, "Spleen", ("spleen", (2,))),
    ({"background": 0, "lesion": [1, 2], "core": 2}, None, ("lesion", (1, 2))),   # nnU-Net region
    ({"background": 0, "lesion": 1, "ignore": 2}, None, ("lesion", (1,))),
])
def test_lesion_label_by_name(labels, name, picked):
    assert pick_lesion_label(labels, name) == picked


@pytest.mark.parametrize(("labels", "name", "fragment"), [
    ({"background": 0, "liver": 1, "spleen": 2}, None, "no label named lesion/lesions/tumor/tumour"),
    ({"background": 0}, None, "0 foreground labels"),
    ({"background": 0, "lesion": 1, "tumor": 2}, None, "several lesion-like labels"),
    ({"background": 0, "lesion": 1}, "kidney", "no foreground label 'kidney'"),
])
def test_no_lesion_label_is_named(labels, name, fragment):
    with pytest.raises(SegmentationError) as exc:
        pick_lesion_label(labels, name)
    assert exc.value.reason == "MODEL_LABEL_MISMATCH" and fragment in exc.value.message


def test_lesion_mask_of_a_label_map():
    b = ModelBinding(channels=("SUV",), roles=("pet",), label="lesion", label_values=(2, 3))
    seg = np.array([0, 1, 2, 3, 4], np.uint8)
    assert b.lesion_mask(seg).tolist() == [0, 0, 1, 1, 0] and b.lesion_mask(seg).dtype == np.uint8
    assert b.to_dict() == {"channels": {"SUV": "pet"}, "lesion_label": "lesion"}


def test_config_keys(tmp_path):
    cfg = RunConfig(extra={"channel_map": {"img0": "pet"}, "lesion_label": "tumor"})
    assert cfg.segment.channel_map == {"img0": "pet"} and cfg.get("segment.lesion_label") == "tumor"
    (tmp_path / "run.yaml").write_text(to_yaml(cfg))
    assert load_config(tmp_path / "run.yaml") == cfg
    over = parse_overrides(["segment.channel_map={FOO: baseline_mask}"])
    assert RunConfig().replace(over).segment.channel_map == {"FOO": "baseline_mask"}
    for bad in ({"channel_map": {"FOO": "suv"}}, {"channel_map": ["FOO"]}, {"lesion_label": ""}):
        with pytest.raises(ConfigError) as exc:
            RunConfig(segment=bad)
        assert exc.value.reason == "BAD_VALUE" and f"segment.{next(iter(bad))}" in exc.value.message


# -- model copies (nnU-Net) ------------------------------------------------------------------------
def _first_conv(key: str) -> bool:
    # PlainConvUNet's first convolution, registered as conv and all_modules.0, and again under the
    # decoder's reference to the encoder (dynamic_network_architectures)
    return "stages.0.0.convs.0." in key and (key.endswith("conv.weight") or key.endswith("all_modules.0.weight"))


def model_copy(src, dst: Path, order, *, names=None, labels=None) -> str:
    """A copy of model folder ``src`` whose channels are ``order`` (old names, new order) renamed by ``names``."""
    import torch

    dst = Path(dst) / "Dataset601_Byom" / Path(src).name
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("petcohort_validation.json"))
    ds = json.loads((dst / "dataset.json").read_text())
    old = [ds["channel_names"][str(i)] for i in range(len(ds["channel_names"]))]
    perm = [old.index(n) for n in order]
    ds["channel_names"] = {str(i): (names or {}).get(n, n) for i, n in enumerate(order)}
    if labels is not None:
        ds["labels"] = labels
    (dst / "dataset.json").write_text(json.dumps(ds))
    plans = json.loads((dst / "plans.json").read_text())
    props = plans["foreground_intensity_properties_per_channel"]
    plans["foreground_intensity_properties_per_channel"] = {str(i): props[str(p)] for i, p in enumerate(perm)}
    for cfg in plans["configurations"].values():
        for key in ("normalization_schemes", "use_mask_for_norm"):
            if key in cfg:
                cfg[key] = [cfg[key][p] for p in perm]
    (dst / "plans.json").write_text(json.dumps(plans))
    for path in dst.glob("fold_*/checkpoint_final.pth"):
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        w = ckpt["network_weights"]
        for k in [k for k in w if _first_conv(k)]:
            assert w[k].shape[1] == len(old)
            w[k] = w[k][:, perm].contiguous()
        torch.save(ckpt, path)
    return str(dst)


@pytest.fixture(scope="module")
def nn():
    pytest.importorskip("nnunetv2", reason="nnunetv2 is not installed: run scripts/install_seg.sh .venv")
    pytest.importorskip("ants", reason="antspyx is not installed: run scripts/install_seg.sh .venv")
    import seg_test_data
    from petcohort.engine.segment import nnunet

    yield seg_test_data
    nnunet.clear_cache()


def _ctx(store, key, config):
    from petcohort.pipelines.stages import StageContext

    attrs = store.study_attrs(key)
    base = f"{attrs['patient']}-T0" if int(attrs["timepoint"]) > 0 else None
    return StageContext(store=store, key=key, attrs=attrs, config=config, baseline_key=base)


def _segment_bl(store, key, **segment):
    from petcohort.pipelines.stage_segment import segment_bl_stage

    config = RunConfig(segment={"tta": False, "tile_step": 1.0, "device": "cpu", **segment})
    return segment_bl_stage(_ctx(store, key, config))


@pytest.fixture(scope="module")
def demo_study(nn, tmp_path_factory):
    """A small synthetic study: 32 slices of a demo phantom (a seed held out of training) around its hottest lesion."""
    from petcohort.pipelines.synthetic import synthesize
    from petcohort.storage.store import CohortStore

    if not (DEMO_BL / "fold_0" / "checkpoint_final.pth").is_file():
        pytest.skip("the shipped U-Net_BL (models/demo) is not present")
    tmp = tmp_path_factory.mktemp("byom-synth")
    synthesize(str(tmp / "cohort.zarr"), patients=1, sites=1, seed=4242, mip_dir=tmp / "mips")
    src = CohortStore.open(str(tmp / "cohort.zarr"))
    key = src.study_keys()[0]
    attrs = dict(src.study_attrs(key))
    pet, manual = src.read_array(key, "pet"), src.read_array(key, "seg/manual")
    z = int(np.unravel_index(np.argmax(np.where(manual > 0, pet, 0)), pet.shape)[0])
    lo = min(max(0, z - 16), pet.shape[0] - 32)
    store = CohortStore.create("memory://byom-demo-study")
    attrs["origin"] = [float(attrs["origin"][0]) + lo * float(attrs["spacing"][0]), *attrs["origin"][1:]]
    store.add_study(key, attrs)
    store.write_arrays(key, {n: src.read_array(key, n)[lo:lo + 32] for n in ("pet", "ct", "seg/manual")})
    return store, key


@pytest.mark.slow
def test_shipped_bl_renamed_and_reordered_gives_identical_masks(demo_study, tmp_path):
    """The acceptance test of issue 13: the shipped U-Net_BL as an autoPET-style model (SUV, CTres)."""
    store, key = demo_study
    original = _segment_bl(store, key, model_bl=str(DEMO_BL))
    mask = original.arrays["seg/nnunet_bl"]
    assert mask.any() and original.summary["channels"] == {"PET": "pet", "CT": "ct"}
    renamed = model_copy(DEMO_BL, tmp_path / "renamed", ["PET", "CT"], names={"PET": "SUV", "CT": "CTres"})
    reordered = model_copy(DEMO_BL, tmp_path / "reordered", ["CT", "PET"], names={"PET": "SUV", "CT": "CTres"})
    for folder, channels in ((renamed, {"SUV": "pet", "CTres": "ct"}), (reordered, {"CTres": "ct", "SUV": "pet"})):
        out = _segment_bl(store, key, model_bl=folder)
        assert list(out.summary["channels"].items()) == list(channels.items())      # the model's own order
        assert out.summary["lesion_label"] == "lesion" and out.summary["suv_clip"] == 5.0
        np.testing.assert_array_equal(out.arrays["seg/nnunet_bl"], mask)


@pytest.fixture(scope="module")
def tiny(nn, tmp_path_factory):
    """Random-weight U-Net_BL/U-Net_FU folders and a registered tiny patient (as test_segment_stages)."""
    from petcohort.pipelines.stage_register import register_stage_fn

    base = tmp_path_factory.mktemp("byom-tiny")
    bl = nn.make_model_folder(base / "bl", BL_CHANNELS, folds=(0,))
    fu = nn.make_model_folder(base / "fu", FU_CHANNELS, folds=(0,), seed=5)
    store = nn.make_store("memory://byom-tiny", patients=1, followups=1)
    fu_key = "P-0000000000-T1"
    out = register_stage_fn(_ctx(store, fu_key, RunConfig()))
    store.commit_stage(fu_key, "register", arrays=out.arrays, record={"status": "committed", "summary": out.summary})
    return {"bl": bl, "fu": fu, "store": store, "base": base}


def test_bl_model_as_suv_ctres_in_either_order_gives_identical_masks(tiny, tmp_path):
    store, key = tiny["store"], "P-0000000000-T0"
    mask = _segment_bl(store, key, model_bl=tiny["bl"]).arrays["seg/nnunet_bl"]
    assert mask.any()
    for order in (["PET", "CT"], ["CT", "PET"]):
        copy = model_copy(tiny["bl"], tmp_path / order[0], order, names={"PET": "SUV", "CT": "CTres"})
        np.testing.assert_array_equal(_segment_bl(store, key, model_bl=copy).arrays["seg/nnunet_bl"], mask)


def test_fu_model_reordered_with_other_names_gives_identical_masks(tiny, tmp_path):
    from petcohort.pipelines.stage_segment import segment_fu_stage

    store, key = tiny["store"], "P-0000000000-T1"
    opts = {"tta": False, "tile_step": 1.0, "device": "cpu"}
    original = segment_fu_stage(_ctx(store, key, RunConfig(segment={**opts, "model_fu": tiny["fu"]})))
    mask = original.arrays["seg/nnunet_fu"]
    assert mask.any() and original.summary["baseline_mask_source"] == "manual"
    copy = model_copy(tiny["fu"], tmp_path, ["noNorm", "PET_BL", "CT", "PET"],
                      names={"noNorm": "prior", "PET_BL": "SUV_BL", "CT": "CTres", "PET": "SUV"})
    config = RunConfig(segment={**opts, "model_fu": copy, "channel_map": {"prior": "baseline_mask"}})
    out = segment_fu_stage(_ctx(store, key, config))
    assert out.summary["channels"] == {"prior": "baseline_mask", "SUV_BL": "baseline_pet", "CTres": "ct",
                                       "SUV": "pet"}
    np.testing.assert_array_equal(out.arrays["seg/nnunet_fu"], mask)


def test_pet_only_model_needs_no_ct(tiny):
    store, key = tiny["store"], "P-0000000000-T0"
    out = _segment_bl(store, key, model_bl=_tiny_model(tiny["base"] / "pet-only", ("SUV",)))
    assert out.summary["channels"] == {"SUV": "pet"}
    assert out.arrays["seg/nnunet_bl"].shape == store.read_array(key, "pet").shape


def _tiny_model(folder: Path, channels, **kw) -> str:
    import seg_test_data

    return seg_test_data.make_model_folder(folder, channels, folds=(0,), **kw)


# -- refused once, before any study ----------------------------------------------------------------
class _NoCluster:
    """A Dask client stand-in that fails the test if the run gets as far as using it."""

    def __getattr__(self, name):
        raise AssertionError(f"the run reached the cluster (client.{name}) with a model that cannot run")


def _refused(store, **segment) -> ConfigError:
    from petcohort.pipelines.run import run_cohort

    config = RunConfig(segment=segment)
    before = store.stage_records()
    with pytest.raises(ConfigError) as exc:
        run_cohort(store.url, stages=["segment_bl", "segment_fu"] if "model_fu" in segment else ["segment_bl"],
                   config=config, client=_NoCluster())
    assert store.stage_records() == before and store.read_json("run") is None
    return exc.value


def test_unknown_channel_refused_once_with_the_names_and_the_way_out(tiny, tmp_path):
    store = tiny["store"]
    folder = _tiny_model(tmp_path / "fdg", ("FDG", "CT"))
    err = _refused(store, model_bl=folder)
    assert err.reason == "MODEL_CHANNELS_MISMATCH" and err.message.startswith("segment.model_bl: ")
    assert "['FDG', 'CT']" in err.message and "'FDG' matches no known input" in err.message
    assert "segment.channel_map" in err.message and "suvbw" in err.message
    # mapped: the same model runs
    from petcohort.pipelines.stage_segment import validate_models

    bound = validate_models(RunConfig(segment={"model_bl": folder, "channel_map": {"FDG": "pet"}}), ["segment_bl"])
    assert bound["segment_bl"].roles == ("pet", "ct")
    # a U-Net_FU model given as U-Net_BL: its baseline channels have no input there
    err = _refused(store, model_bl=tiny["fu"])
    assert err.reason == "MODEL_CHANNELS_MISMATCH" and "'PET_BL' is the baseline_pet input" in err.message
    err = _refused(store, model_bl=tiny["bl"], channel_map={"SUV": "pet"})       # a typo'd map entry
    assert err.reason == "BAD_VALUE" and "segment.channel_map: ['SUV']" in err.message


def test_label_map_without_lesion_refused_once(tiny, tmp_path):
    store = tiny["store"]
    organs = model_copy(tiny["bl"], tmp_path, ["PET", "CT"], labels={"background": 0, "liver": 1})
    # one foreground label is the lesion label whatever its name; two without a lesion name are not
    from petcohort.pipelines.stage_segment import validate_models

    assert validate_models(RunConfig(segment={"model_bl": organs}), ["segment_bl"])["segment_bl"].label == "liver"
    err = _refused(store, model_bl=tiny["bl"], lesion_label="tumor")
    assert err.reason == "MODEL_LABEL_MISMATCH" and "no foreground label 'tumor'" in err.message
    assert err.message.startswith("segment.model_bl: ") and "segment.lesion_label" in err.message


def test_incomplete_or_foreign_model_folders_refused_once(tiny, tmp_path):
    import torch

    store = tiny["store"]
    for i, missing in enumerate(("dataset.json", "plans.json", "fold_0/checkpoint_final.pth")):
        folder = Path(model_copy(tiny["bl"], tmp_path / str(i), ["PET", "CT"]))
        (folder / missing).unlink()
        err = _refused(store, model_bl=str(folder))
        assert err.reason == "MODEL_INCOMPLETE" and err.message.startswith("segment.model_bl: ")
        assert missing.split("/")[0].replace("fold_0", "fold_<k>") in err.message
    # a checkpoint of another network (other features per stage) in a folder whose plans describe this one
    other = _tiny_model(tmp_path / "other", ("PET", "CT", "PET_BL"))
    folder = Path(model_copy(tiny["bl"], tmp_path / "foreign", ["PET", "CT"]))
    shutil.copy(Path(other) / "fold_0" / "checkpoint_final.pth", folder / "fold_0" / "checkpoint_final.pth")
    err = _refused(store, model_bl=str(folder))
    assert err.reason == "MODEL_ARCHITECTURE_MISMATCH" and "fold_0/checkpoint_final.pth" in err.message
    assert "[4, 3, 3, 3, 3] in the checkpoint, [4, 2, 3, 3, 3] from the plans" in err.message
    torch.save({"weights": {}}, folder / "fold_0" / "checkpoint_final.pth")
    assert _refused(store, model_bl=str(folder)).reason == "MODEL_INCOMPLETE"
    # a selected nnU-Net stage without its model; the U-Net_FU checked as well as U-Net_BL
    assert _refused(store, model_bl=tiny["bl"], model_fu=str(folder)).reason == "MODEL_INCOMPLETE"
    from petcohort.pipelines.run import run_cohort

    with pytest.raises(ConfigError) as exc:
        run_cohort(store.url, stages=["segment_fu"], config=RunConfig(), client=_NoCluster())
    assert exc.value.reason == "NO_MODEL" and "segment.model_fu" in exc.value.message


def test_cli_says_it_once(tiny, tmp_path):
    from petcohort.pipelines.cli import app
    from petcohort.storage.store import CohortStore
    from typer.testing import CliRunner

    nn_store = tmp_path / "cohort.zarr"
    CohortStore.create(str(nn_store))
    folder = _tiny_model(tmp_path / "fdg", ("FDG", "CT"))
    result = CliRunner().invoke(app, ["run", "--store", str(nn_store), "--model-bl", folder, "--stages", "segment_bl"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "MODEL_CHANNELS_MISMATCH" in errors[0] and "FDG" in errors[0]


def test_a_task_meets_the_same_check(tiny, tmp_path):
    store, key = tiny["store"], "P-0000000000-T0"
    folder = _tiny_model(tmp_path / "fdg", ("FDG", "CT"))
    with pytest.raises(PetCohortError) as exc:
        _segment_bl(store, key, model_bl=folder)
    assert exc.value.reason == "MODEL_CHANNELS_MISMATCH" and "segment.channel_map" in exc.value.message
