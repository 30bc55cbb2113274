"""What petcohort knows of an nnU-Net model without importing nnU-Net: the
trained-folder layout (``dataset.json``, ``plans.json``, ``fold_<k>``), how a
model's channels and lesion label bind to a study's arrays, and the training
plan overrides. Re-exported by ``engine/segment/nnunet.py`` (the only module
that imports nnunetv2).

Binding ("bring your own model"): nnU-Net feeds channels by position, in the
order of dataset.json ``channel_names`` ("0", "1", ...), and takes each
channel's normalisation from plans.json by the same position, so a model's
channel *names* are free text. :func:`bind_model` maps each name to a study
input (a *role*: ``pet``, ``ct``, ``baseline_pet``, ``baseline_mask``) by
known synonyms or an explicit map, keeping the model's own order, and picks
the lesion label by name from dataset.json ``labels``.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from petcohort.engine.errors import InputError, SegmentationError

__all__ = ["CHANNEL_SYNONYMS", "LESION_LABEL_NAMES", "ROLES", "ModelBinding", "ModelInfo", "TrainPlan",
           "bind_channels", "bind_model", "channel_key", "load_json", "pick_lesion_label", "read_model_info"]

#: Study inputs a model channel can be bound to: PET (SUVbw), CT (HU on the PET grid), the
#: baseline PET registered to the follow-up (SUVbw) and the registered baseline lesion mask (0/1).
ROLES = ("pet", "ct", "baseline_pet", "baseline_mask")
_PET_NAMES = ("pet", "suv", "pt", "suvbw")          # "PT": the DICOM Modality of PET (PS3.3 C.7.3.1.1.1)
#: Channel names (compared by :func:`channel_key`) that bind to each role without an explicit map.
#: Those of petcohort's own networks (storage.nnunet_export BL_CHANNELS / FU_CHANNELS: PET, CT, PET_BL,
#: noNorm) are among them; ``CTres`` is the autoPET challenge's CT resampled to the PET grid.
CHANNEL_SYNONYMS: dict[str, frozenset[str]] = {
    "pet": frozenset(_PET_NAMES),
    "ct": frozenset(("ct", "ctres", "ct_hu")),
    "baseline_pet": frozenset(n for p in _PET_NAMES for n in (f"{p}_bl", f"bl_{p}", f"baseline_{p}",
                                                               f"{p}_baseline")),
    # "noNorm" selects nnU-Net's NoNormalization for the 0/1 mask channel of U-Net_FU
    "baseline_mask": frozenset(("nonorm", "baseline_mask", "mask_bl", "bl_mask", "seg_bl", "bl_seg")),
}
#: Label names taken as the lesion label when none is configured.
LESION_LABEL_NAMES = ("lesion", "lesions", "tumor", "tumour")


@dataclass(frozen=True)
class ModelInfo:
    """What a trained nnU-Net model folder holds (read from its JSON files)."""

    folder: str
    channel_names: tuple[str, ...]          # in channel order ("0", "1", ...)
    labels: dict[str, int]
    folds: tuple[str, ...]                  # folds with the requested checkpoint, e.g. ("0", "1")
    configuration: str | None
    normalization: tuple[str, ...] | None   # per channel, from the plans (e.g. "ZScoreNormalization")


def load_json(path: str, what: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise SegmentationError("MODEL_INCOMPLETE", f"model folder lacks {what}: {path} not found") from None
    except json.JSONDecodeError as exc:
        raise SegmentationError("MODEL_INCOMPLETE", f"{path} is not valid JSON: {exc}") from None


def read_model_info(folder: str | os.PathLike, *, checkpoint: str = "checkpoint_final.pth") -> ModelInfo:
    """Check a trained model folder and read its channels, labels and folds.

    Raises
    ------
    SegmentationError
        ``MODEL_INCOMPLETE`` when the folder, ``dataset.json``, ``plans.json``
        or every ``fold_<k>/<checkpoint>`` is missing.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise SegmentationError("MODEL_INCOMPLETE", f"model folder {folder!r} does not exist")
    ds = load_json(os.path.join(folder, "dataset.json"), "dataset.json")
    plans = load_json(os.path.join(folder, "plans.json"), "plans.json")
    names = ds.get("channel_names", ds.get("modality"))
    if not isinstance(names, dict) or not names:
        raise SegmentationError("MODEL_INCOMPLETE", f"{folder}/dataset.json has no channel_names")
    channel_names = tuple(str(names[k]) for k in sorted(names, key=int))
    folds = tuple(sorted((d[len("fold_"):] for d in os.listdir(folder)
                          if d.startswith("fold_") and os.path.isfile(os.path.join(folder, d, checkpoint))),
                         key=lambda f: (not f.isdigit(), f)))
    if not folds:
        raise SegmentationError("MODEL_INCOMPLETE", f"model folder {folder!r} has no fold_<k>/{checkpoint}")
    config = os.path.basename(os.path.normpath(folder)).split("__")[-1] or None
    norm = plans.get("configurations", {}).get(config, {}).get("normalization_schemes") if config else None
    return ModelInfo(folder=folder, channel_names=channel_names, labels=dict(ds.get("labels", {})), folds=folds,
                     configuration=config, normalization=tuple(norm) if norm else None)


def channel_key(name: str) -> str:
    """A channel name as compared with the synonyms: case-folded, ``-``/space as ``_``, trimmed."""
    return str(name).strip().casefold().replace("-", "_").replace(" ", "_")


def _role_of(name: str) -> str | None:
    key = channel_key(name)
    return next((role for role, names in CHANNEL_SYNONYMS.items() if key in names), None)


def bind_channels(names: Sequence[str], available: Sequence[str],
                  channel_map: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The study input (role) of each model channel, in the model's own order.

    Parameters
    ----------
    names : sequence of str
        The model's channel names (dataset.json ``channel_names``, in order).
    available : sequence of str
        The roles the caller can provide (a subset of :data:`ROLES`).
    channel_map : mapping of str to str, optional
        Explicit ``{channel name: role}``; wins over the synonyms. Names are
        compared by :func:`channel_key`; entries naming no channel are ignored
        here (the caller checks them across its models).

    Returns
    -------
    tuple of str
        One role per channel.

    Raises
    ------
    SegmentationError
        ``MODEL_CHANNELS_MISMATCH`` naming every channel that matches no role,
        binds to a role not in ``available``, or shares its role with another
        channel through the synonyms (ambiguous without an explicit map).
    """
    explicit = {channel_key(k): v for k, v in (channel_map or {}).items()}
    roles, problems = [], []
    for name in names:
        role = explicit.get(channel_key(name)) or _role_of(name)
        roles.append(role)
        if role is None:
            problems.append(f"{name!r} matches no known input")
        elif role not in available:
            problems.append(f"{name!r} is the {role} input, which this network is not given")
    by_synonym = [r for n, r in zip(names, roles) if r is not None and channel_key(n) not in explicit]
    for role in sorted({r for r in by_synonym if by_synonym.count(r) > 1}):
        problems.append(f"channels {[n for n, r in zip(names, roles) if r == role]} all read as {role} "
                        f"(ambiguous)")
    if problems:
        raise SegmentationError("MODEL_CHANNELS_MISMATCH", f"model channels {list(names)} (dataset.json "
                                                           f"channel_names, in order): " + "; ".join(problems))
    return tuple(roles)  # type: ignore[arg-type]


def _label_values(value: Any) -> tuple[int, ...] | None:
    """A dataset.json label value as ints: one label, or the labels of an nnU-Net region (a list)."""
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
        return None
    return tuple(int(v) for v in values)


def pick_lesion_label(labels: Mapping[str, Any], name: str | None = None) -> tuple[str, tuple[int, ...]]:
    """The lesion label of a model's dataset.json ``labels``: ``(name, values in the predicted map)``.

    ``name`` given: that label (compared case-insensitively). Otherwise the
    label named as in :data:`LESION_LABEL_NAMES`, else the only label that is
    neither ``background`` (value 0) nor ``ignore``.

    Raises
    ------
    SegmentationError
        ``MODEL_LABEL_MISMATCH`` naming the model's labels when none, or more
        than one, qualifies.
    """
    fg = {str(k): v for k, v in labels.items() if str(k).casefold() not in ("background", "ignore")
          and _label_values(v) not in (None, (0,))}
    folded = {k.casefold(): k for k in fg}
    if name is not None:
        hits = [folded[name.casefold()]] if name.casefold() in folded else []
        why = f"has no foreground label {name!r}"
    else:
        hits = [folded[n] for n in LESION_LABEL_NAMES if n in folded] or (list(fg) if len(fg) == 1 else [])
        why = (f"has several lesion-like labels {hits}" if len(hits) > 1 else
               f"has no label named {'/'.join(LESION_LABEL_NAMES)} and {len(fg)} foreground labels")
    if len(hits) != 1:
        raise SegmentationError("MODEL_LABEL_MISMATCH", f"model labels {dict(labels)} (dataset.json labels) "
                                                        f"{why}: the lesion label must be named")
    return hits[0], _label_values(fg[hits[0]])  # type: ignore[return-value]


@dataclass(frozen=True)
class ModelBinding:
    """How one model reads a study: a role per channel (model order) and the lesion label."""

    channels: tuple[str, ...]      # the model's channel names, in its order
    roles: tuple[str, ...]         # the study input of each channel
    label: str                     # the lesion label's name in dataset.json
    label_values: tuple[int, ...]  # its value(s) in the predicted label map

    def lesion_mask(self, seg: np.ndarray) -> np.ndarray:
        """The lesion voxels of a predicted label map (uint8 0/1)."""
        return np.isin(seg, self.label_values).astype(np.uint8)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record: ``{"channels": {name: role}, "lesion_label": name}``."""
        return {"channels": dict(zip(self.channels, self.roles)), "lesion_label": self.label}


def bind_model(info: ModelInfo, available: Sequence[str], *, channel_map: Mapping[str, str] | None = None,
               lesion_label: str | None = None) -> ModelBinding:
    """Bind a model's channels (:func:`bind_channels`) and lesion label (:func:`pick_lesion_label`)."""
    roles = bind_channels(info.channel_names, available, channel_map)
    label, values = pick_lesion_label(info.labels, lesion_label)
    return ModelBinding(channels=tuple(info.channel_names), roles=roles, label=label, label_values=values)


@dataclass(frozen=True)
class TrainPlan:
    """Overrides of nnU-Net's 3d_fullres plan and trainer schedule (documented in models/README.md)."""

    base_features: int = 8
    max_features: int = 64
    patch_size: tuple[int, int, int] | None = (48, 48, 48)   # None: nnU-Net's own choice
    batch_size: int = 2
    epochs: int = 10
    iterations_per_epoch: int = 25
    val_iterations_per_epoch: int = 5
    initial_lr: float = 1e-2
    target_spacing: tuple[float, float, float] | None = None  # mm (z, y, x); None: nnU-Net's median spacing

    def __post_init__(self) -> None:
        for name in ("base_features", "max_features", "batch_size", "epochs", "iterations_per_epoch",
                     "val_iterations_per_epoch"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise InputError("BAD_VALUE", f"{name} must be an int >= 1, got {v!r}")
        if self.patch_size is not None and (len(self.patch_size) != 3 or min(self.patch_size) < 8):
            raise InputError("BAD_VALUE", f"patch_size must be 3 ints >= 8 (z, y, x), got {self.patch_size!r}")
        if self.target_spacing is not None and (len(self.target_spacing) != 3 or min(self.target_spacing) <= 0):
            raise InputError("BAD_VALUE", f"target_spacing must be 3 positive mm values (z, y, x), "
                                              f"got {self.target_spacing!r}")
