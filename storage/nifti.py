"""NIfTI volumes and the autoPET study-folder layout (nibabel).

Axis convention: our arrays are ``(Z, Y, X)`` with LPS axes (X to patient
left, Y posterior, Z to the head), ``spacing``/``origin`` in array-axis order.
NIfTI stores data ``(i, j, k)`` with an affine to RAS+ world coordinates. We
write ``data[i, j, k] = volume[k, j, i]`` with affine
``diag(-sx, -sy, sz)`` and translation ``(-ox, -oy, oz)`` (LPS -> RAS flips x
and y), the convention ITK and SimpleITK use; reading reorients any
axis-aligned NIfTI back to that layout (nibabel orientation utilities).

An autoPET study folder (Gatidis et al., autoPET challenge data) holds
``SUV.nii.gz``, ``CTres.nii.gz`` (CT on the PET grid) and, when known,
``SEG.nii.gz``; petcohort adds a ``study.json`` sidecar with the metadata.
"""
from __future__ import annotations

import json
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.orientations import axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from petcohort.engine.errors import GridError, InputError

__all__ = ["NiftiStudy", "read_nifti", "write_nifti", "is_autopet_folder", "read_study_folder",
           "write_study_folder", "read_sidecar", "instance_map", "SIDECAR", "PET_FILE", "CT_FILE", "SEG_FILE"]

PET_FILE, CT_FILE, SEG_FILE, SIDECAR = "SUV.nii.gz", "CTres.nii.gz", "SEG.nii.gz", "study.json"
_LPS = axcodes2ornt(("L", "P", "S"))   # our (X, Y, Z) as NIfTI (i, j, k)
_AUTOPET_DATE = re.compile(r"^(\d{2})-(\d{2})-(\d{4})")   # autoPET study folders start MM-DD-YYYY


def _affine(spacing, origin) -> np.ndarray:
    sz, sy, sx = (float(v) for v in spacing)
    oz, oy, ox = (float(v) for v in origin)
    aff = np.diag([-sx, -sy, sz, 1.0])
    aff[:3, 3] = [-ox, -oy, oz]
    return aff


def write_nifti(path: str | os.PathLike, volume: np.ndarray, *, spacing, origin) -> None:
    """Write a ``(Z, Y, X)`` LPS volume as NIfTI-1 (dtype kept; qform and sform set, code 1 = scanner)."""
    volume = np.asarray(volume)
    if volume.ndim != 3 or len(spacing) != 3 or len(origin) != 3:
        raise InputError("NOT_3D", f"volume must be (Z, Y, X) with 3 spacing/origin values, got shape "
                         f"{volume.shape}, spacing={spacing!r}, origin={origin!r}")
    aff = _affine(spacing, origin)
    img = nib.Nifti1Image(np.ascontiguousarray(volume.transpose(2, 1, 0)), aff)
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))


def read_nifti(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float, float], tuple[float, float, float]]:
    """Read a 3D NIfTI as ``(Z, Y, X)`` LPS: ``(array, spacing, origin)``; dtype as stored on disk.

    Raises
    ------
    InputError
        ``NIFTI_UNREADABLE`` (not a NIfTI file), ``NIFTI_NOT_3D`` (not 3D after squeezing length-1 trailing axes),
        ``NIFTI_OBLIQUE`` (the affine is not axis-aligned).
    """
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error) as exc:
        # the exception text holds the full path (which may name the patient): keep only its type
        raise InputError("NIFTI_UNREADABLE", f"{Path(path).name} cannot be read as NIfTI "
                         f"({type(exc).__name__})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError("NIFTI_NOT_3D", f"{Path(path).name}: expected a 3D image, got shape {data.shape}")
    affine = img.affine
    rot = affine[:3, :3]
    scales = np.sqrt((rot ** 2).sum(axis=0))
    direction = rot / scales
    if not np.allclose(np.abs(direction), np.round(np.abs(direction)), atol=1e-4):
        raise InputError("NIFTI_OBLIQUE", f"{Path(path).name}: affine is not axis-aligned; oblique images are refused")
    transform = ornt_transform(io_orientation(affine), _LPS)
    data = nib.orientations.apply_orientation(data, transform)
    affine = affine @ inv_ornt_aff(transform, img.shape[:3])
    sx, sy, sz = -affine[0, 0], -affine[1, 1], affine[2, 2]
    ox, oy, oz = -affine[0, 3], -affine[1, 3], affine[2, 3]
    if data.dtype.kind == "f" and data.dtype != np.float32 and data.dtype.itemsize > 4:
        data = data.astype(np.float32)
    return (np.ascontiguousarray(data.transpose(2, 1, 0)), (float(sz), float(sy), float(sx)),
            (float(oz), float(oy), float(ox)))


@dataclass(frozen=True)
class NiftiStudy:
    """One autoPET-layout study folder.

    Attributes
    ----------
    pet : (Z, Y, X) float32, SUVbw
    ct : (Z, Y, X) int16, HU on the PET grid
    seg : (Z, Y, X) uint8 or None
    seg_instances : (Z, Y, X) uint16 or None
        The label map itself when ``SEG.nii.gz`` holds more than one lesion
        label (each label one lesion); None for a binary mask.
    meta : dict
        The ``study.json`` sidecar (empty for plain autoPET folders, plus
        ``patient_id``/``study_date`` derived from the folder names).
    """

    pet: np.ndarray
    ct: np.ndarray
    seg: np.ndarray | None
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    meta: dict[str, Any] = field(default_factory=dict)
    seg_instances: np.ndarray | None = None


def is_autopet_folder(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds ``SUV.nii.gz`` and ``CTres.nii.gz``."""
    folder = Path(folder)
    return (folder / PET_FILE).is_file() and (folder / CT_FILE).is_file()


def write_study_folder(folder: str | os.PathLike, *, pet: np.ndarray, ct: np.ndarray, seg: np.ndarray | None,
                       spacing, origin, meta: dict) -> None:
    """Write ``SUV.nii.gz`` (float32), ``CTres.nii.gz`` (int16), ``SEG.nii.gz`` (uint8) and ``study.json``.

    ``meta`` holds JSON values (weight_kg, height_m, sex, injected_dose_bq,
    scan/injection times as ISO strings, site, scanner, timepoint, patient_id).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if pet.shape != ct.shape or (seg is not None and seg.shape != pet.shape):
        raise GridError("GRID_MISMATCH", f"pet {pet.shape}, ct {ct.shape} and seg "
                         f"{None if seg is None else seg.shape} must share one grid")
    write_nifti(folder / PET_FILE, np.asarray(pet, dtype=np.float32), spacing=spacing, origin=origin)
    write_nifti(folder / CT_FILE, np.asarray(ct).astype(np.int16), spacing=spacing, origin=origin)
    if seg is not None:
        write_nifti(folder / SEG_FILE, (np.asarray(seg) > 0).astype(np.uint8), spacing=spacing, origin=origin)
    (folder / SIDECAR).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))


def read_sidecar(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``study.json`` metadata of a study folder, without reading the images.

    Without ``study.json`` (plain autoPET data) the result has ``patient_id``
    = the parent folder name and ``study_date`` (ISO) from a leading
    ``MM-DD-YYYY`` of the folder name when present.

    Raises
    ------
    InputError
        ``NIFTI_BAD_SIDECAR`` when ``study.json`` is not a JSON object.
    """
    folder = Path(folder)
    meta: dict[str, Any] = {}
    if (folder / SIDECAR).is_file():
        try:
            meta = json.loads((folder / SIDECAR).read_text())
        except json.JSONDecodeError as exc:
            raise InputError("NIFTI_BAD_SIDECAR", f"{SIDECAR} is not valid JSON: {exc}") from exc
        if not isinstance(meta, dict):
            raise InputError("NIFTI_BAD_SIDECAR", f"{SIDECAR} must hold a JSON object, got {type(meta).__name__}")
    else:
        meta["patient_id"] = folder.parent.name
        m = _AUTOPET_DATE.match(folder.name)
        if m:
            meta["study_date"] = f"{m.group(3)}-{m.group(1)}-{m.group(2)}"
    return meta


def read_study_folder(folder: str | os.PathLike) -> NiftiStudy:
    """Read an autoPET study folder (see :func:`write_study_folder`).

    ``meta`` is :func:`read_sidecar`.

    Raises
    ------
    InputError
        ``NIFTI_MISSING_FILE``, ``GRID_MISMATCH``, ``NIFTI_BAD_SIDECAR``.
    """
    folder = Path(folder)
    if not is_autopet_folder(folder):
        raise InputError("NIFTI_MISSING_FILE", f"study folder must hold {PET_FILE} and {CT_FILE}")
    pet, spacing, origin = read_nifti(folder / PET_FILE)
    ct, ct_spacing, ct_origin = read_nifti(folder / CT_FILE)
    grids = [(ct.shape, ct_spacing, ct_origin)]
    seg = instances = None
    if (folder / SEG_FILE).is_file():
        seg_arr, seg_spacing, seg_origin = read_nifti(folder / SEG_FILE)
        seg = (seg_arr > 0).astype(np.uint8)
        instances = instance_map(seg_arr)
        grids.append((seg.shape, seg_spacing, seg_origin))
    for shape, sp, org in grids:
        if shape != pet.shape or not np.allclose(sp, spacing, atol=1e-3) or not np.allclose(org, origin, atol=1e-2):
            raise GridError("GRID_MISMATCH", f"CTres/SEG grid {shape} {sp} {org} differs from SUV grid "
                             f"{pet.shape} {spacing} {origin}")
    meta = read_sidecar(folder)
    ct_hu = np.clip(np.rint(ct), -32768, 32767).astype(np.int16) if ct.dtype != np.int16 else ct
    return NiftiStudy(pet=pet.astype(np.float32, copy=False), ct=ct_hu, seg=seg, spacing=spacing,
                      origin=origin, meta=meta, seg_instances=instances)


def instance_map(labels: np.ndarray) -> np.ndarray | None:
    """A label map's lesion ids as uint16 (None when binary: lesions are then its components).

    Raises InputError ``NIFTI_BAD_LABELS`` for non-integer values or ids outside 1..65535.
    """
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.array_equal(labels, np.rint(labels)):
            raise InputError("NIFTI_BAD_LABELS", f"{SEG_FILE} holds non-integer values; a mask must be 0/1 or "
                             "integer lesion labels")
    values = np.unique(labels)
    values = values[values != 0]
    if values.size <= 1:
        return None
    if values.min() < 0 or values.max() > np.iinfo(np.uint16).max:
        raise InputError("NIFTI_BAD_LABELS", f"{SEG_FILE} lesion labels must be 1..65535, got "
                         f"{values.min()}..{values.max()}")
    return np.rint(labels).astype(np.uint16)
