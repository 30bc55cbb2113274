"""Export a cohort store to nnU-Net v2 raw datasets with shared patient-level folds.

``export_nnunet(store, out_dir)`` writes (nnU-Net's ``dataset_format.md``)::

    out_dir/Dataset501_PetCohortBL/imagesTr/<study>_0000.nii.gz   PET SUVbw clipped to [0, suv_clip]
                                    imagesTr/<study>_0001.nii.gz   CT (HU, PET grid)
                                    labelsTr/<study>.nii.gz        manual lesion mask
                                    dataset.json, splits_final.json
    out_dir/Dataset502_PetCohortFU/imagesTr/<study>_0000..0003     FU PET, FU CT, registered BL PET,
                                                                    registered BL manual mask
                                    labelsTr, dataset.json, splits_final.json
    out_dir/folds.json          {patient key: fold}, the one assignment both datasets use

U-Net_BL is trained on baselines, U-Net_FU on follow-ups (docs/methods.md "nnU-Net
networks"). nnU-Net picks each channel's normalisation from its name in
``channel_names`` (``nnunetv2/preprocessing/normalization/
map_channel_name_to_normalization.py``): ``CT`` -> CT normalisation,
``noNorm`` -> none (the baseline mask stays 0/1), anything else -> per-image
z-score (the PETs). Follow-ups need the ``register`` stage's
``reg/baseline_pet`` and ``reg/baseline_mask`` made from the baseline's manual
mask; others are skipped with a reason. NIfTI files are written with
SimpleITK, whose ``(Z, Y, X)`` array order and LPS geometry are those of the
store, so nnU-Net's SimpleITKIO reads back exactly the store arrays.
"""
from __future__ import annotations

import json
import logging
import os
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from petcohort.engine.errors import InputError

__all__ = ["BL_CHANNELS", "FU_CHANNELS", "clipped_pet", "dataset_name", "export_nnunet", "make_folds",
           "splits_from_folds", "write_case"]

log = logging.getLogger(__name__)

#: channel names in dataset.json order (they also select nnU-Net's normalisation).
BL_CHANNELS = ("PET", "CT")
FU_CHANNELS = ("PET", "CT", "PET_BL", "noNorm")
LABELS = {"background": 0, "lesion": 1}


def dataset_name(dataset_id: int, network: str) -> str:
    """nnU-Net dataset folder name, e.g. ``Dataset501_PetCohortBL``."""
    if not (isinstance(dataset_id, int) and 1 <= dataset_id <= 999):
        raise InputError("BAD_VALUE", f"dataset_id must be an int in 1..999, got {dataset_id!r}")
    return f"Dataset{dataset_id:03d}_PetCohort{network}"


def make_folds(patients: dict[str, dict[str, Any]], *, n_folds: int = 5, seed: int = 0) -> dict[str, int]:
    """Patient-level folds balanced by site and number of follow-ups.

    Parameters
    ----------
    patients : {patient key: {"site": str, "followups": int}}
    n_folds : int >= 2
    seed : int  shuffles patients within each (site, follow-ups) stratum

    Returns
    -------
    {patient key: fold index}. Each stratum is dealt round-robin, continuing
    where the previous stratum stopped, so every stratum is spread over the
    folds and fold sizes differ by at most one patient.
    """
    if not isinstance(n_folds, int) or n_folds < 2:
        raise InputError("BAD_VALUE", f"n_folds must be an int >= 2, got {n_folds!r}")
    if len(patients) < n_folds:
        raise InputError("TOO_FEW_PATIENTS", f"{n_folds}-fold cross-validation needs >= {n_folds} patients "
                                             f"with manual masks, got {len(patients)}")
    strata: dict[tuple[str, int], list[str]] = defaultdict(list)
    for p, info in patients.items():
        strata[(str(info.get("site")), int(info.get("followups", 0)))].append(p)
    rng = random.Random(seed)
    folds: dict[str, int] = {}
    nxt = 0
    for stratum in sorted(strata):
        members = sorted(strata[stratum])
        rng.shuffle(members)
        for p in members:
            folds[p] = nxt % n_folds
            nxt += 1
    return folds


def splits_from_folds(cases: dict[str, str], folds: dict[str, int], n_folds: int) -> list[dict[str, list[str]]]:
    """nnU-Net ``splits_final.json`` from {case id: patient key} and {patient: fold}."""
    return [{"train": sorted(c for c, p in cases.items() if folds[p] != k),
             "val": sorted(c for c, p in cases.items() if folds[p] == k)} for k in range(n_folds)]


def _write_nifti(path: Path, array: np.ndarray, spacing, origin) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(array))  # (Z, Y, X) -> ITK (x, y, z)
    img.SetSpacing([float(s) for s in spacing[::-1]])
    img.SetOrigin([float(o) for o in origin[::-1]])
    sitk.WriteImage(img, str(path), useCompression=True)


def clipped_pet(store, key: str, name: str = "pet", *, suv_clip: float = 5.0) -> np.ndarray:
    """A PET array of the store as the networks see it: SUVbw clipped to [0, suv_clip], float32."""
    return np.clip(store.read_array(key, name).astype(np.float32), 0.0, float(suv_clip))


def write_case(store, key: str, folder: str | os.PathLike, network: str = "BL", *,
               suv_clip: float = 5.0) -> list[Path]:
    """Write one study's network input as nnU-Net files ``<key>_<channel:04d>.nii.gz`` in ``folder``.

    ``network`` "BL": PET, CT; "FU": also the registered baseline PET and the
    registered baseline manual mask (``reg/*``, from the ``register`` stage).
    This is the input layout of stock ``nnUNetv2_predict`` too. Returns the paths written.
    """
    if network not in ("BL", "FU"):
        raise InputError("BAD_VALUE", f"network must be 'BL' or 'FU', got {network!r}")
    a = store.study_attrs(key)
    chans = [clipped_pet(store, key, suv_clip=suv_clip), store.read_array(key, "ct")]
    if network == "FU":
        chans += [clipped_pet(store, key, "reg/baseline_pet", suv_clip=suv_clip),
                  (store.read_array(key, "reg/baseline_mask") > 0).astype(np.uint8)]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{key}_{i:04d}.nii.gz" for i in range(len(chans))]
    for path, c in zip(paths, chans):
        _write_nifti(path, c, a["spacing"], a.get("origin", [0.0, 0.0, 0.0]))
    return paths


def _dataset_json(channels, n: int, extra: dict) -> dict:
    return {"channel_names": {str(i): c for i, c in enumerate(channels)}, "labels": LABELS,
            "numTraining": n, "file_ending": ".nii.gz", "overwrite_image_reader_writer": "SimpleITKIO",
            "petcohort": extra}


def _followup_reason(store, key: str, base: str | None) -> str | None:
    if base is None:
        return "NO_BASELINE"
    if not store.has_array(key, "reg/baseline_pet"):
        return "NO_REGISTRATION"
    rec = store.stage_record(key, "register") or {}
    if (rec.get("summary") or {}).get("mask_source") != "manual" or not store.has_array(key, "reg/baseline_mask"):
        return "NO_MANUAL_BASELINE_MASK"
    return None


def export_nnunet(store, out_dir: str | os.PathLike, *, dataset_id_bl: int = 501, dataset_id_fu: int = 502,
                  n_folds: int = 5, seed: int = 0, suv_clip: float = 5.0) -> dict[str, Any]:
    """Write the U-Net_BL and U-Net_FU raw datasets and their shared splits.

    Parameters
    ----------
    store : CohortStore
    out_dir : path  becomes nnU-Net's ``nnUNet_raw`` (created; existing datasets of these ids are refused)
    dataset_id_bl, dataset_id_fu : int  nnU-Net dataset ids
    n_folds : int  cross-validation folds (patient level)
    seed : int  fold assignment seed
    suv_clip : float > 0  PET SUVbw clipped to [0, suv_clip] (docs/methods.md; RunConfig.suv_clip)

    Returns
    -------
    dict  {"bl": {"dataset": name, "cases": n}, "fu": {...}, "folds": {patient: fold},
           "skipped": {study: reason}}
    """
    if not (isinstance(suv_clip, (int, float)) and suv_clip > 0):
        raise InputError("BAD_VALUE", f"suv_clip must be a positive number, got {suv_clip!r}")
    out = Path(out_dir)
    names = {"BL": dataset_name(dataset_id_bl, "BL"), "FU": dataset_name(dataset_id_fu, "FU")}
    if dataset_id_bl == dataset_id_fu:
        raise InputError("BAD_VALUE", f"dataset_id_bl and dataset_id_fu must differ, both are {dataset_id_bl}")
    for name in names.values():
        if (out / name).exists():
            raise InputError("EXPORT_EXISTS", f"{out / name} already exists; choose another out_dir or dataset id")
    keys = store.study_keys()
    attrs = {k: store.study_attrs(k) for k in keys}
    baseline_of = {a.get("patient"): k for k, a in attrs.items() if int(a.get("timepoint", 0)) == 0}
    bl_cases: dict[str, str] = {}
    fu_cases: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for k in keys:
        a = attrs[k]
        if not store.has_array(k, "seg/manual"):
            skipped[k] = "NO_MANUAL_MASK"
        elif not store.has_array(k, "ct"):
            skipped[k] = "NO_CT"      # PET-only study: both networks take a CT channel
        elif int(a.get("timepoint", 0)) == 0:
            bl_cases[k] = a.get("patient")
        else:
            reason = _followup_reason(store, k, baseline_of.get(a.get("patient")))
            if reason:
                skipped[k] = reason
            else:
                fu_cases[k] = a.get("patient")
    followups = defaultdict(int)
    for k, a in attrs.items():
        if int(a.get("timepoint", 0)) > 0:
            followups[a.get("patient")] += 1
    patients = {p: {"site": attrs[baseline_of[p]].get("site") if p in baseline_of else None,
                    "followups": followups[p]} for p in set(bl_cases.values()) | set(fu_cases.values())}
    folds = make_folds(patients, n_folds=n_folds, seed=seed)
    provenance = {"suv_clip": float(suv_clip), "fold_seed": seed, "n_folds": n_folds,
                  "mask_channel": "registered baseline seg/manual"}
    for net, cases, channels in (("BL", bl_cases, BL_CHANNELS), ("FU", fu_cases, FU_CHANNELS)):
        root = out / names[net]
        (root / "imagesTr").mkdir(parents=True)
        (root / "labelsTr").mkdir()
        for k in sorted(cases):
            a = attrs[k]
            spacing, origin = a["spacing"], a.get("origin", [0.0, 0.0, 0.0])
            write_case(store, k, root / "imagesTr", net, suv_clip=suv_clip)
            label = (store.read_array(k, "seg/manual") > 0).astype(np.uint8)
            _write_nifti(root / "labelsTr" / f"{k}.nii.gz", label, spacing, origin)
        (root / "dataset.json").write_text(json.dumps(_dataset_json(channels, len(cases), provenance), indent=1))
        (root / "splits_final.json").write_text(json.dumps(splits_from_folds(cases, folds, n_folds), indent=1))
    (out / "folds.json").write_text(json.dumps(dict(sorted(folds.items())), indent=1))
    log.info("exported %d BL and %d FU cases (%d skipped) to %s", len(bl_cases), len(fu_cases), len(skipped), out)
    return {"bl": {"dataset": names["BL"], "cases": len(bl_cases)},
            "fu": {"dataset": names["FU"], "cases": len(fu_cases)},
            "folds": folds, "skipped": skipped}
