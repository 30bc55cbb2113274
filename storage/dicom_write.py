"""PET and CT DICOM writers (pydicom), with the vendor variants the SUV rules cover.

:func:`write_pet_series` converts an SUVbw volume back to the stored
representation (Bq/mL, counts or a GML SUV) with the exact inverse of the SUV
factor that ``storage/suv_header.py`` computes from the written headers:
the headers are built first, the factor is computed from them, then the
pixels are encoded. :func:`encode_pet_int16`/:func:`decode_pet_int16` give
the int16 + per-slice slope representation and the SUVs a reader gets back,
so a synthetic cohort can store exactly what a DICOM round trip reproduces.
"""
from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from petcohort.engine.errors import InputError, SuvError
from petcohort.storage.dicom_time import format_da, format_dt, format_tm
from petcohort.storage.suv_header import suv_from_datasets

__all__ = ["encode_pet_int16", "decode_pet_int16", "write_pet_series", "write_ct_series", "ds_value"]

PET_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.128"
CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"
_INT16_MAX = 32767


def ds_value(x: float) -> str:
    """A float as a DICOM DS string (<= 16 characters); ``float(ds_value(x))`` is what a reader sees."""
    return format_number_as_ds(float(x))


def _per_slice(factors: float | Sequence[float] | np.ndarray, nz: int) -> np.ndarray:
    f = np.broadcast_to(np.asarray(factors, dtype=np.float64), (nz,)).copy()
    if not np.all(np.isfinite(f)) or np.any(f <= 0):
        raise InputError("BAD_SCALE_FACTOR", f"factors must be positive and finite, got {f[:5]}...")
    return f


def encode_pet_int16(suv: np.ndarray, factors: float | Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Encode SUVs as int16 stored values and per-slice RescaleSlopes.

    Parameters
    ----------
    suv : (Z, Y, X) ndarray of float, SUVbw
    factors : float or (Z,) array
        SUVbw per rescaled unit (e.g. per Bq/mL) of each slice.

    Returns
    -------
    stored : (Z, Y, X) ndarray of int16
    slopes : (Z,) ndarray of float64
        RescaleSlope of each slice, already rounded to its DS string, chosen so
        that the slice's largest magnitude uses the int16 range.
    """
    suv = np.asarray(suv, dtype=np.float64)
    if suv.ndim != 3 or not np.all(np.isfinite(suv)):
        raise InputError("NOT_3D", f"suv must be a finite (Z, Y, X) array, got shape {suv.shape}")
    f = _per_slice(factors, suv.shape[0])
    rescaled = suv / f[:, None, None]
    peak = np.abs(rescaled).max(axis=(1, 2))
    slopes = np.array([float(ds_value(p / _INT16_MAX)) if p > 0 else 1.0 for p in peak])
    stored = np.clip(np.rint(rescaled / slopes[:, None, None]), -_INT16_MAX - 1, _INT16_MAX).astype(np.int16)
    return stored, slopes


def decode_pet_int16(stored: np.ndarray, slopes: np.ndarray,
                     factors: float | Sequence[float] | np.ndarray) -> np.ndarray:
    """The float32 SUVs a reader gets back: (stored * slope + 0) * factor in float64, rounded once."""
    f = _per_slice(factors, stored.shape[0])
    out = stored.astype(np.float64) * np.asarray(slopes, dtype=np.float64)[:, None, None] + 0.0
    return (out * f[:, None, None]).astype(np.float32)


def _base_dataset(sop_class: str, uid_seed: list[str], z: int, patient: dict, scan: dict, modality: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    sop_uid = generate_uid(entropy_srcs=uid_seed + [modality, "sop", str(z)])
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.Modality = modality
    ds.PatientID = str(patient["id"])
    ds.PatientName = str(patient.get("name", ""))
    ds.PatientSex = str(patient.get("sex") or "")
    if patient.get("weight_kg") is not None:
        ds.PatientWeight = ds_value(patient["weight_kg"])
    if patient.get("height_m") is not None:
        ds.PatientSize = ds_value(patient["height_m"])
    ds.StudyInstanceUID = str(scan.get("study_uid") or generate_uid(entropy_srcs=uid_seed + ["study"]))
    ds.SeriesInstanceUID = str(scan.get(f"{modality.lower()}_series_uid")
                               or generate_uid(entropy_srcs=uid_seed + [modality, "series"]))
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=uid_seed + ["frame"])
    start: _dt.datetime = scan["acquisition_datetime"]
    ds.StudyDate, ds.StudyTime = format_da(start), format_tm(start)
    ds.Manufacturer = str(scan.get("manufacturer", ""))
    ds.ManufacturerModelName = str(scan.get("model", ""))
    ds.InstitutionName = str(scan.get("site", ""))
    ds.InstanceNumber = z + 1
    # type-2 attributes of the patient/study/series/equipment modules (present, may be empty)
    ds.PatientBirthDate, ds.ReferringPhysicianName, ds.AccessionNumber, ds.StudyID = "", "", "", "1"
    ds.SeriesNumber = 1 if modality == "PT" else 2
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    return ds


def _geometry(ds: Dataset, z: int, shape: tuple[int, int, int], spacing: Sequence[float],
              origin: Sequence[float]) -> None:
    sz, sy, sx = (float(v) for v in spacing)
    oz, oy, ox = (float(v) for v in origin)
    ds.Rows, ds.Columns = int(shape[1]), int(shape[2])
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.ImagePositionPatient = [ds_value(ox), ds_value(oy), ds_value(oz + z * sz)]
    ds.PixelSpacing = [ds_value(sy), ds_value(sx)]
    ds.SliceThickness = ds_value(sz)
    ds.SliceLocation = ds_value(oz + z * sz)


def _check_volume(name: str, volume: np.ndarray, spacing, origin) -> None:
    if volume.ndim != 3:
        raise InputError("NOT_3D", f"{name} must be (Z, Y, X), got shape {volume.shape}")
    if len(spacing) != 3 or len(origin) != 3 or min(float(s) for s in spacing) <= 0:
        raise InputError("BAD_GEOMETRY", f"spacing/origin must be 3 values (z, y, x) mm with spacing > 0, "
                         f"got spacing={spacing!r} origin={origin!r}")


def _save(folder: Path, prefix: str, datasets: list[Dataset]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for z, ds in enumerate(datasets):
        path = folder / f"{prefix}{z:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(str(path))
    return paths


def write_pet_series(folder: str | os.PathLike, suv_volume: np.ndarray, *, spacing: Sequence[float],
                     origin: Sequence[float], patient: dict, scan: dict, units: str = "BQML",
                     suv_type: str | None = None, cnts_scale: str = "philips_suv", philips_acsf: float = 0.25,
                     philips_private_on_bqml: bool = False, decay_correction: str = "START",
                     corrected_image: Sequence[str] = ("NORM", "DTIM", "ATTN", "SCAT", "DECY", "RAN"),
                     slice_offsets_s: Sequence[float] | None = None, series_datetime: _dt.datetime | None = None,
                     ge_private_datetime: _dt.datetime | None = None,
                     frame_reference_time_ms: float | Sequence[float] | None = None, dose_in_mbq: bool = False,
                     injection_time_only: bool = False, omit: Sequence[str] = ()) -> dict:
    """Write an SUVbw volume as a PET DICOM series (one file per slice).

    Parameters
    ----------
    folder : path
        Created if missing; files ``PT0000.dcm``... in z order.
    suv_volume : (Z, Y, X) ndarray of float, SUVbw
    spacing, origin : 3 floats
        (sz, sy, sx) and (oz, oy, ox) in mm, LPS, array-axis order.
    patient : dict
        ``id``, ``name`` (optional), ``weight_kg``, ``height_m``, ``sex``.
    scan : dict
        ``acquisition_datetime`` (datetime, scan start), ``injection_datetime``,
        ``dose_bq``, ``half_life_s``, ``frame_duration_s``; optional
        ``study_uid``, ``pt_series_uid``, ``manufacturer``, ``model``, ``site``.
    units : {"BQML", "CNTS", "GML", "CM2ML"}
        CNTS uses ``cnts_scale`` = "philips_suv" (7053,1000) or "philips_acsf" (7053,1009).
    suv_type : str, optional
        SUVType (0054,1006) for GML/CM2ML images.
    decay_correction : {"START", "ADMIN", "NONE"}
    slice_offsets_s : (Z,) floats, optional
        Acquisition time of each slice after ``acquisition_datetime`` (default 0).
    series_datetime : datetime, optional
        SeriesDate/Time (default ``acquisition_datetime``; later = a post-processed series).
    ge_private_datetime : datetime, optional
        Writes the GE PET scan date-time (0009,100D).
    frame_reference_time_ms : float or (Z,), optional
        Writes FrameReferenceTime.
    dose_in_mbq, injection_time_only : bool
        Store the dose in MBq; store RadiopharmaceuticalStartTime without a date.
    omit : keywords
        Elements removed after the pixels are encoded (for bad-header tests); a
        ``Radio...`` keyword is removed from the radiopharmaceutical item.

    Returns
    -------
    dict
        ``files`` (paths), ``suv`` ((Z, Y, X) float32: the SUVbw a reader gets
        back), ``stored`` (int16), ``slopes``, ``factors`` ((Z,) SUVbw per
        rescaled unit), ``report`` (suv_from_datasets of the full headers).
    """
    suv_volume = np.asarray(suv_volume)
    _check_volume("suv_volume", suv_volume, spacing, origin)
    nz = suv_volume.shape[0]
    start: _dt.datetime = scan["acquisition_datetime"]
    offsets = np.zeros(nz) if slice_offsets_s is None else np.asarray(slice_offsets_s, dtype=np.float64)
    frame_ref = (None if frame_reference_time_ms is None
                 else np.broadcast_to(np.asarray(frame_reference_time_ms, dtype=np.float64), (nz,)))
    seed = [str(patient["id"]), start.isoformat(), str(scan.get("study_uid", ""))]
    series_dt = series_datetime or start
    injection: _dt.datetime = scan["injection_datetime"]
    datasets = []
    for z in range(nz):
        ds = _base_dataset(PET_SOP_CLASS, seed, z, patient, scan, "PT")
        _geometry(ds, z, suv_volume.shape, spacing, origin)
        ds.SeriesDate, ds.SeriesTime = format_da(series_dt), format_tm(series_dt)
        acq = start + _dt.timedelta(seconds=float(offsets[z]))
        ds.AcquisitionDate, ds.AcquisitionTime = format_da(acq), format_tm(acq)
        ds.ActualFrameDuration = int(round(float(scan["frame_duration_s"]) * 1000))
        if frame_ref is not None:
            ds.FrameReferenceTime = ds_value(frame_ref[z])
        ds.Units, ds.DecayCorrection = "BQML", decay_correction
        ds.CorrectedImage = list(corrected_image)
        ds.SeriesType = ["WHOLE BODY", "IMAGE"]
        ds.CountsSource, ds.NumberOfSlices, ds.ImageIndex = "EMISSION", nz, z + 1
        item = Dataset()
        item.Radiopharmaceutical = "Fluorodeoxyglucose"
        item.RadionuclideTotalDose = ds_value(scan["dose_bq"] / 1e6 if dose_in_mbq else scan["dose_bq"])
        item.RadionuclideHalfLife = ds_value(scan["half_life_s"])
        if injection_time_only:
            item.RadiopharmaceuticalStartTime = format_tm(injection)
        else:
            item.RadiopharmaceuticalStartDateTime = format_dt(injection)
        ds.RadiopharmaceuticalInformationSequence = DicomSequence([item])
        if ge_private_datetime is not None:
            ds.private_block(0x0009, "GEMS_PETD_01", create=True).add_new(0x0D, "DT", format_dt(ge_private_datetime))
        datasets.append(ds)
    base = _factors(datasets)  # SUVbw per Bq/mL from the headers exactly as a reader computes it
    if units == "CNTS":
        for z, ds in enumerate(datasets):
            block = ds.private_block(0x7053, "Philips PET Private Group", create=True)
            if cnts_scale == "philips_suv":
                block.add_new(0x00, "DS", ds_value(philips_acsf * base[z]))
            elif cnts_scale == "philips_acsf":
                block.add_new(0x09, "DS", ds_value(philips_acsf))
            else:
                raise InputError("BAD_VALUE",
                                 f"cnts_scale must be 'philips_suv' or 'philips_acsf', got {cnts_scale!r}")
            ds.Units = "CNTS"
    elif units in ("GML", "CM2ML"):
        for ds in datasets:
            ds.Units = units
            if suv_type is not None:
                ds.SUVType = suv_type
    elif units == "BQML":
        if philips_private_on_bqml:  # a nonsense SUV scale factor that a reader must ignore on BQML
            for ds in datasets:
                ds.private_block(0x7053, "Philips PET Private Group", create=True).add_new(0x00, "DS", "12345")
    else:
        raise InputError("BAD_VALUE", f"units must be BQML, CNTS, GML or CM2ML, got {units!r}")
    report = suv_from_datasets(datasets)
    factors = _factors(datasets, report)
    stored, slopes = encode_pet_int16(suv_volume, factors)
    for z, ds in enumerate(datasets):
        ds.RescaleSlope, ds.RescaleIntercept = ds_value(slopes[z]), "0"
        ds.PixelData = stored[z].tobytes()
        for keyword in omit:
            target = ds.RadiopharmaceuticalInformationSequence[0] if keyword.startswith("Radio") and \
                keyword != "RadiopharmaceuticalInformationSequence" else ds
            if keyword in target:
                delattr(target, keyword)
    files = _save(Path(folder), "PT", datasets)
    return {"files": files, "suv": decode_pet_int16(stored, slopes, factors), "stored": stored,
            "slopes": slopes, "factors": factors, "report": report}


def _factors(datasets: list[Dataset], report: dict | None = None) -> np.ndarray:
    report = report or suv_from_datasets(datasets)
    if report["reason"]:
        raise SuvError(report["reason"],
                       f"cannot write a PET series whose SUV factor is undefined: {report['message']}")
    if report["suv_bw_factor"] is not None:
        return np.full(len(datasets), report["suv_bw_factor"])
    return np.array([report["suv_bw_factors"][str(ds.SOPInstanceUID)] for ds in datasets])


def write_ct_series(folder: str | os.PathLike, hu_volume: np.ndarray, *, spacing: Sequence[float],
                    origin: Sequence[float], patient: dict, scan: dict) -> dict[str, Any]:
    """Write a CT volume (HU) as a DICOM series: int16 stored = HU + 1024, RescaleIntercept -1024.

    Parameters
    ----------
    hu_volume : (Z, Y, X) ndarray, HU
        Values are rounded and clipped to [-1024, 31743].
    scan : dict
        ``acquisition_datetime``; optional ``study_uid``, ``ct_series_uid``, ``manufacturer``, ``model``, ``site``.

    Returns
    -------
    dict
        ``files`` and ``hu`` (the (Z, Y, X) int16 HU a reader gets back).
    """
    hu_volume = np.asarray(hu_volume)
    _check_volume("hu_volume", hu_volume, spacing, origin)
    stored = (np.clip(np.rint(hu_volume), -1024, _INT16_MAX - 1024) + 1024).astype(np.int16)
    start: _dt.datetime = scan["acquisition_datetime"]
    seed = [str(patient["id"]), start.isoformat(), str(scan.get("study_uid", ""))]
    datasets = []
    for z in range(hu_volume.shape[0]):
        ds = _base_dataset(CT_SOP_CLASS, seed, z, patient, scan, "CT")
        _geometry(ds, z, hu_volume.shape, spacing, origin)
        ds.SeriesDate, ds.SeriesTime = format_da(start), format_tm(start)
        ds.AcquisitionDate, ds.AcquisitionTime = format_da(start), format_tm(start)
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = "1", "-1024", "HU"
        ds.KVP = "120"
        ds.PixelData = stored[z].tobytes()
        datasets.append(ds)
    files = _save(Path(folder), "CT", datasets)
    return {"files": files, "hu": (stored.astype(np.int32) - 1024).astype(np.int16)}
