"""DICOM series discovery and volume assembly.

Headers are read first (``stop_before_pixels``) to group files into series by
StudyInstanceUID / SeriesInstanceUID / Modality; pixels are read only for the
series that are assembled. Volumes follow docs/contracts.md: a ``(Z, Y, X)``
array with Z growing towards the head (increasing LPS z), Y posterior and X to
patient left; ``spacing``/``origin`` in array-axis order (mm, LPS).
Axis-aligned axial series only: anything else is refused with ``DICOM_OBLIQUE``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from petcohort.engine.errors import DicomError

__all__ = ["SeriesInfo", "Volume", "Archive", "read_dataset", "is_mask_object", "SEG_SOP_CLASS",
           "LABELMAP_SEG_SOP_CLASS", "RTSTRUCT_SOP_CLASS", "scan_dicom_archive", "scan_dicom_tree", "read_series", "read_single_series", "slice_geometry"]

log = logging.getLogger(__name__)
_AXIS_TOL = 1e-4          # direction cosines this close to 0/1 count as axis-aligned
_SPACING_RTOL = 0.01      # slice gaps may differ by 1% (floating point in IPP strings)


@dataclass(frozen=True)
class SeriesInfo:
    """The files of one series (headers only).

    ``patient_id`` is the raw DICOM PatientID: use it only to form a
    pseudonym, never in keys, logs or reports.
    """

    study_uid: str
    series_uid: str
    modality: str
    patient_id: str
    files: tuple[str, ...]
    headers: tuple[Dataset, ...]

    @property
    def folder(self) -> str:
        return os.path.commonpath([os.path.dirname(f) for f in self.files])


@dataclass(frozen=True)
class Volume:
    """An assembled series.

    Attributes
    ----------
    array : (Z, Y, X) ndarray of float32
        Rescaled values (RescaleSlope * stored + RescaleIntercept, per slice, in float).
    spacing, origin : tuple of 3 floats
        mm, array-axis order (z, y, x), LPS; origin = centre of voxel [0, 0, 0].
    headers : tuple of Dataset
        Slice headers in array order (index z).
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    headers: tuple[Dataset, ...]


@dataclass(frozen=True)
class Archive:
    """What a DICOM tree holds, headers only.

    Attributes
    ----------
    series : list of SeriesInfo
        Image series, sorted by (study, modality, series) UID.
    objects : list of (path, Dataset)
        Non-image objects that may carry masks (DICOM SEG, RTSTRUCT), in path order.
    unreadable : int
        Files that look like DICOM (``DICM`` preamble) but cannot be parsed. Counted, never named: a
        path may hold a patient's name.
    """

    series: list[SeriesInfo]
    objects: list[tuple[str, Dataset]]
    unreadable: int


SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"            # Segmentation Storage (PS3.4 B.5)
LABELMAP_SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.7"   # Label Map Segmentation Storage (PS3.4 B.5)
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"      # RT Structure Set Storage


def is_mask_object(ds: Dataset) -> bool:
    """Whether a dataset is a DICOM SEG (Segmentation or Label Map Segmentation Storage) or an RT Structure Set.

    The SOP class decides; the Modality only when the SOP class is absent
    (Surface Segmentation also has Modality SEG and is not a mask here).
    """
    sop = str(ds.get("SOPClassUID", ""))
    if sop:
        return sop in (SEG_SOP_CLASS, LABELMAP_SEG_SOP_CLASS, RTSTRUCT_SOP_CLASS)
    return str(ds.get("Modality", "")) in ("SEG", "RTSTRUCT")


def _looks_like_dicom(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def read_dataset(path: str, *, stop_before_pixels: bool = False) -> Dataset | None:
    """A DICOM file's dataset; None for a file that is not DICOM.

    Part 10 files (preamble + ``DICM``) are read as such. Files without the
    preamble (raw datasets, as older archives and some tools write them) are
    accepted when the forced read yields a SOP Class and SOP Instance UID: a
    non-DICOM file does not parse to those. Every reader of the archive
    (series, SEG, RTSTRUCT) goes through here, so a file found by the scan
    can be read again.
    """
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        if _looks_like_dicom(path):
            raise
    ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
    try:
        ok = bool(str(ds.get("SOPClassUID", "") or "").startswith("1.2.840.10008.") and ds.get("SOPInstanceUID"))
    except Exception:  # noqa: BLE001 - garbage parsed as elements
        ok = False
    return ds if ok else None


def scan_dicom_archive(root: str | os.PathLike) -> Archive:
    """Every image series and mask object under ``root`` (headers only).

    Files that are not DICOM are skipped; files with a DICOM preamble that
    fail to parse are counted in ``unreadable``.
    """
    groups: dict[tuple[str, str, str], list[tuple[str, Dataset]]] = {}
    objects: list[tuple[str, Dataset]] = []
    unreadable = 0
    for dirpath, _dirs, names in sorted(os.walk(root)):
        for name in sorted(names):
            path = os.path.join(dirpath, name)
            try:
                ds = read_dataset(path, stop_before_pixels=True)
                if ds is None:
                    continue
                if not ds.get("SOPClassUID") and not getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID"):
                    unreadable += 1   # a DICOM file that does not say what it is: malformed
                    continue
                is_mask = is_mask_object(ds)
                is_image = "SeriesInstanceUID" in ds and ("PixelSpacing" in ds or "Rows" in ds)
            except (InvalidDicomError, EOFError):
                unreadable += _looks_like_dicom(path)
                continue
            except OSError:
                continue
            except Exception:  # noqa: BLE001 - pydicom raises many types for malformed elements
                unreadable += 1
                continue
            if is_mask:
                objects.append((path, ds))
                continue
            if not is_image:
                continue  # DICOMDIR, presentation states, structured reports: not images
            key = (str(ds.get("StudyInstanceUID", "")), str(ds.SeriesInstanceUID), str(ds.get("Modality", "")))
            groups.setdefault(key, []).append((path, ds))
    out = []
    for (study, series, modality), items in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
        out.append(SeriesInfo(study_uid=study, series_uid=series, modality=modality,
                              patient_id=str(items[0][1].get("PatientID", "")),
                              files=tuple(p for p, _ in items), headers=tuple(d for _, d in items)))
    log.debug("found %d DICOM series (%s), %d mask objects, %d unreadable files", len(out),
              ", ".join(s.modality for s in out), len(objects), unreadable)
    return Archive(series=out, objects=objects, unreadable=unreadable)


def scan_dicom_tree(root: str | os.PathLike) -> list[SeriesInfo]:
    """Every DICOM image series under ``root``, sorted by (study, modality, series) UID."""
    return scan_dicom_archive(root).series


def read_single_series(folder: str | os.PathLike, *, modality: str | None = None) -> tuple[SeriesInfo, Volume]:
    """The one series in ``folder`` (``modality`` filters first); DICOM_MIXED_SERIES if several."""
    series = scan_dicom_tree(folder)
    if modality is not None:
        series = [s for s in series if s.modality == modality]
    if not series:
        raise DicomError("DICOM_NO_SERIES", f"no DICOM image series{' of modality ' + modality if modality else ''} "
                         "found in the folder")
    if len(series) > 1:
        raise DicomError("DICOM_MIXED_SERIES", f"{len(series)} series found where one was expected "
                         f"(modalities {sorted({s.modality for s in series})}); give a folder with one series")
    return series[0], read_series(series[0])


def _floats(ds: Dataset, keyword: str, n: int) -> np.ndarray:
    value = ds.get(keyword)
    if value is None or len(value) != n:
        raise DicomError("DICOM_MISSING_TAG", f"{keyword} missing or not {n} values in an image "
                         f"(got {value!r})")
    return np.asarray([float(v) for v in value], dtype=np.float64)


def slice_geometry(headers: Sequence[Dataset]) -> tuple[list[int], tuple[float, float, float],
                                                         tuple[float, float, float], tuple[bool, bool]]:
    """Sort order and geometry of axial slices.

    Returns
    -------
    order : list of int
        Indices of ``headers`` in increasing LPS z (for the axial series
        accepted here this is the order of ImagePositionPatient . normal, up
        to the sign of the normal).
    spacing, origin : tuple
        (sz, sy, sx) and (oz, oy, ox) in mm once rows/columns are flipped as below.
    flips : (bool, bool)
        Whether the Y (rows) and X (columns) axes of the pixel arrays must be
        reversed so that Y grows posterior and X to patient left.
    """
    iop = _floats(headers[0], "ImageOrientationPatient", 6)
    for ds in headers[1:]:
        if not np.allclose(_floats(ds, "ImageOrientationPatient", 6), iop, atol=_AXIS_TOL):
            raise DicomError("DICOM_INCONSISTENT_SLICES", "ImageOrientationPatient differs between slices")
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    aligned = (np.allclose(np.abs(row), [1, 0, 0], atol=_AXIS_TOL)
               and np.allclose(np.abs(col), [0, 1, 0], atol=_AXIS_TOL))
    if not aligned:
        raise DicomError("DICOM_OBLIQUE", f"ImageOrientationPatient {iop.round(5).tolist()} is not axial and "
                         "axis-aligned (rows along x, columns along y); oblique or non-axial series are refused")
    pixel = _floats(headers[0], "PixelSpacing", 2)
    rows, cols = int(headers[0].Rows), int(headers[0].Columns)
    for ds in headers[1:]:
        if int(ds.Rows) != rows or int(ds.Columns) != cols or not np.allclose(_floats(ds, "PixelSpacing", 2), pixel):
            raise DicomError("DICOM_INCONSISTENT_SLICES", "Rows/Columns/PixelSpacing differ between slices")
    positions = np.stack([_floats(ds, "ImagePositionPatient", 3) for ds in headers])
    along = positions @ normal
    order = list(np.argsort(positions[:, 2], kind="stable"))
    z = positions[order, 2]
    if len(headers) > 1:
        gaps = np.diff(z)
        if np.any(gaps < 1e-3):
            raise DicomError("DICOM_DUPLICATE_SLICES", f"{int(np.sum(gaps < 1e-3))} slice position(s) occur more "
                             "than once along the slice normal")
        step = float(np.min(gaps))
        if np.any(np.abs(gaps - step) > _SPACING_RTOL * step):
            ratio = gaps / step
            near_multiple = np.abs(ratio - np.round(ratio)) <= _SPACING_RTOL * np.round(ratio)
            if np.all(near_multiple):
                missing = int(np.sum(np.round(ratio) - 1))
                raise DicomError("DICOM_MISSING_SLICES", f"{missing} slice(s) missing: gaps of "
                                 f"{sorted(set(np.round(gaps, 3).tolist()))} mm where {step:.3f} mm is expected")
            raise DicomError("DICOM_UNEVEN_SPACING", f"slice gaps {sorted(set(np.round(gaps, 3).tolist()))} mm "
                             "are not even")
        sz = float(np.mean(gaps))
        if not np.allclose(np.abs(np.diff(along[order])), sz, rtol=_SPACING_RTOL):
            raise DicomError("DICOM_UNEVEN_SPACING", "slice positions do not move along the slice normal")
    else:
        thickness = headers[0].get("SliceThickness")
        if thickness is None or float(thickness) <= 0:
            raise DicomError("DICOM_MISSING_TAG", "a single-slice series needs SliceThickness for the z spacing")
        sz = float(thickness)
    sy, sx = float(pixel[0]), float(pixel[1])   # PixelSpacing = (between rows, between columns)
    flip_x, flip_y = row[0] < 0, col[1] < 0
    p0 = positions[order[0]]
    ox = p0[0] - (cols - 1) * sx if flip_x else p0[0]
    oy = p0[1] - (rows - 1) * sy if flip_y else p0[1]
    # the x/y of the first voxel must agree on every slice (no sheared stacks)
    if not np.allclose(positions[:, :2], positions[0, :2], atol=1e-2):
        raise DicomError("DICOM_OBLIQUE", "ImagePositionPatient x/y changes between slices (sheared stack)")
    return order, (sz, sy, sx), (float(p0[2]), float(oy), float(ox)), (bool(flip_y), bool(flip_x))


def read_series(series: SeriesInfo, *, scale: float | dict[str, float] | None = None) -> Volume:
    """Assemble one series into a float32 ``(Z, Y, X)`` volume, rescaling each slice in float.

    Parameters
    ----------
    scale : float or dict, optional
        Factor applied to the rescaled values of every slice (e.g. the SUVbw
        factor), or a dict SOPInstanceUID -> factor (per-image factors). It is
        applied in float64 before the single rounding to float32.

    Raises
    ------
    DicomError
        DICOM_MISSING_SLICES, DICOM_DUPLICATE_SLICES, DICOM_UNEVEN_SPACING,
        DICOM_OBLIQUE, DICOM_INCONSISTENT_SLICES, DICOM_MISSING_TAG, DICOM_BAD_PIXELS,
        DICOM_MULTIFRAME_UNSUPPORTED.
    """
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in series.headers):
        raise DicomError("DICOM_MULTIFRAME_UNSUPPORTED", "multi-frame (enhanced) images are not supported; "
                         "convert the series to one image per slice")
    order, spacing, origin, (flip_y, flip_x) = slice_geometry(series.headers)
    files = [series.files[i] for i in order]
    first = series.headers[order[0]]
    volume = np.empty((len(files), int(first.Rows), int(first.Columns)), dtype=np.float32)
    headers = []
    for z, path in enumerate(files):
        ds = read_dataset(path)
        if ds is None:
            raise DicomError("DICOM_BAD_PIXELS", f"slice {z}: the file is no longer readable as DICOM")
        try:
            stored = ds.pixel_array
        except Exception as exc:  # pydicom raises several types for unreadable/compressed pixel data
            raise DicomError("DICOM_BAD_PIXELS",
                             f"slice {z}: pixel data unreadable ({type(exc).__name__}: {exc})") from exc
        if stored.shape != volume.shape[1:]:
            raise DicomError("DICOM_BAD_PIXELS",
                             f"slice {z}: pixel array shape {stored.shape}, expected {volume.shape[1:]}")
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        # float64 arithmetic, one rounding to float32 at the end (the same order dicom_write's decode uses)
        rescaled = stored.astype(np.float64) * slope + intercept
        if scale is not None:
            uid = str(ds.get("SOPInstanceUID", ""))
            if isinstance(scale, dict) and uid not in scale:
                raise DicomError("DICOM_MISSING_TAG", f"slice {z}: no scale factor for its SOPInstanceUID")
            rescaled = rescaled * (scale[uid] if isinstance(scale, dict) else float(scale))
        volume[z] = rescaled
        del ds.PixelData
        headers.append(ds)
    if flip_y:
        volume = volume[:, ::-1, :]
    if flip_x:
        volume = volume[:, :, ::-1]
    return Volume(array=np.ascontiguousarray(volume), spacing=spacing, origin=origin, headers=tuple(headers))
