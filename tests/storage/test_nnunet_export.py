"""Export of a cohort store to nnU-Net raw datasets (storage/nnunet_export.py)."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import seg_test_data as data
from petcohort.engine.errors import InputError
from petcohort.storage.nnunet_export import (
    BL_CHANNELS,
    FU_CHANNELS,
    export_nnunet,
    make_folds,
    splits_from_folds,
)


def _commit_fake_registration(store, key, base, *, manual=True):
    """What the register stage commits, without running ANTs (identity: same grid in these phantoms)."""
    arrays = {"reg/baseline_pet": store.read_array(base, "pet")}
    if manual:
        arrays["reg/baseline_mask"] = store.read_array(base, "seg/manual")
    store.commit_stage(key, "register", arrays=arrays,
                       record={"summary": {"mask_source": "manual" if manual else None}})


def test_folds_balanced_patient_disjoint_and_seeded():
    patients = {f"P-{i:010x}": {"site": "AB"[i % 2], "followups": 1 + (i % 3)} for i in range(23)}
    folds = make_folds(patients, n_folds=5, seed=3)
    assert set(folds) == set(patients) and set(folds.values()) == set(range(5))
    sizes = Counter(folds.values())
    assert max(sizes.values()) - min(sizes.values()) <= 1
    for stratum in {(v["site"], v["followups"]) for v in patients.values()}:
        members = [p for p, v in patients.items() if (v["site"], v["followups"]) == stratum]
        per_fold = Counter(folds[p] for p in members)
        assert max(per_fold.values()) - min(per_fold.get(k, 0) for k in range(5)) <= 1, stratum
    assert make_folds(patients, n_folds=5, seed=3) == folds
    assert make_folds(patients, n_folds=5, seed=4) != folds
    with pytest.raises(InputError) as exc:
        make_folds(dict(list(patients.items())[:3]), n_folds=5)
    assert exc.value.reason == "TOO_FEW_PATIENTS"


def test_splits_from_folds_cover_each_case_once_in_val():
    cases = {"P-a-T0": "P-a", "P-a-T1": "P-a", "P-b-T0": "P-b", "P-c-T1": "P-c"}
    splits = splits_from_folds(cases, {"P-a": 0, "P-b": 1, "P-c": 1}, 2)
    assert splits[0] == {"train": ["P-b-T0", "P-c-T1"], "val": ["P-a-T0", "P-a-T1"]}
    assert sorted(c for s in splits for c in s["val"]) == sorted(cases)


def test_export_layout_channels_and_shared_splits(tmp_path):
    sitk = pytest.importorskip("SimpleITK", reason="SimpleITK is not installed")
    store = data.make_store("memory://seg-export", patients=6, followups=1)
    keys = store.study_keys()
    fus = [k for k in keys if not k.endswith("-T0")]
    for k in fus[:-1]:                      # the last follow-up is not registered: skipped
        _commit_fake_registration(store, k, k[:-1] + "0")
    out = export_nnunet(store, tmp_path, dataset_id_bl=501, dataset_id_fu=502, suv_clip=5.0)
    assert out["bl"] == {"dataset": "Dataset501_PetCohortBL", "cases": 6}
    assert out["fu"] == {"dataset": "Dataset502_PetCohortFU", "cases": 5}
    assert out["skipped"] == {fus[-1]: "NO_REGISTRATION"}
    bl, fu = tmp_path / "Dataset501_PetCohortBL", tmp_path / "Dataset502_PetCohortFU"
    dsj = json.loads((bl / "dataset.json").read_text())
    assert dsj["channel_names"] == {"0": "PET", "1": "CT"} and tuple(dsj["channel_names"].values()) == BL_CHANNELS
    assert dsj["labels"] == {"background": 0, "lesion": 1} and dsj["numTraining"] == 6
    fuj = json.loads((fu / "dataset.json").read_text())
    assert tuple(fuj["channel_names"].values()) == FU_CHANNELS and fuj["channel_names"]["3"] == "noNorm"
    assert len(list((bl / "imagesTr").glob("*.nii.gz"))) == 12 and len(list((fu / "imagesTr").glob("*"))) == 20
    # images read back as the store arrays (array order, spacing, clip)
    k0 = keys[0]
    img = sitk.ReadImage(str(bl / "imagesTr" / f"{k0}_0000.nii.gz"))
    assert list(img.GetSpacing())[::-1] == data.SPACING
    pet = sitk.GetArrayFromImage(img)
    assert np.allclose(pet, np.clip(store.read_array(k0, "pet"), 0, 5)) and pet.max() <= 5.0
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(bl / "imagesTr" / f"{k0}_0001.nii.gz")))
    assert np.array_equal(ct, store.read_array(k0, "ct"))
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(bl / "labelsTr" / f"{k0}.nii.gz")))
    assert np.array_equal(lab, store.read_array(k0, "seg/manual"))
    mask_ch = sitk.GetArrayFromImage(sitk.ReadImage(str(fu / "imagesTr" / f"{fus[0]}_0003.nii.gz")))
    assert np.array_equal(mask_ch, store.read_array(fus[0][:-1] + "0", "seg/manual"))
    # the same patient-level folds in both datasets; train and val patient-disjoint
    folds = json.loads((tmp_path / "folds.json").read_text())
    for ds in (bl, fu):
        splits = json.loads((ds / "splits_final.json").read_text())
        assert len(splits) == 5
        for k, s in enumerate(splits):
            val_p = {c.rsplit("-T", 1)[0] for c in s["val"]}
            train_p = {c.rsplit("-T", 1)[0] for c in s["train"]}
            assert not (val_p & train_p) and all(folds[p] == k for p in val_p)
    with pytest.raises(InputError) as exc:
        export_nnunet(store, tmp_path)
    assert exc.value.reason == "EXPORT_EXISTS"


def test_export_skips_reasons(tmp_path):
    store = data.make_store("memory://seg-export-skip", patients=5, followups=1)
    fus = [k for k in store.study_keys() if not k.endswith("-T0")]
    _commit_fake_registration(store, fus[0], fus[0][:-1] + "0", manual=False)
    out = export_nnunet(store, tmp_path, n_folds=5)
    assert out["skipped"][fus[0]] == "NO_MANUAL_BASELINE_MASK"
    assert out["fu"]["cases"] == 0 and out["bl"]["cases"] == 5
    with pytest.raises(InputError) as exc:
        export_nnunet(store, tmp_path / "x", suv_clip=0)
    assert exc.value.reason == "BAD_VALUE"
