"""The pixel side of DICOM masks: SEG frames and RTSTRUCT contours painted on the PET grid.

* DICOM SEG (PS3.3 A.51, C.8.20): frames read with highdicom and placed on
  PET slices through the referenced source instances (Derivation Image
  Functional Group, C.7.6.16.2.6), else through each frame's
  ImagePositionPatient (:func:`paint_seg`); a SEG on another regular grid of
  the frame of reference is sampled at the PET voxel centres
  (:func:`paint_seg_resampled`).
* RTSTRUCT (PS3.3 A.19, C.8.8.6): CLOSED_PLANAR contours filled even-odd on
  their nearest PET slice (:func:`paint_rtstruct`).

Rules: docs/methods.md, "DICOM masks and series selection" (summarised in
:mod:`petcohort.storage.dicom_masks`, whose :func:`rasterise_mask` calls these).
Messages name segment labels and numbers only, never UIDs or paths.
"""
from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

from petcohort.engine.errors import DicomError, PetCohortError
from petcohort.engine.kernels.polygon import fill_polygons
from petcohort.storage.dicom_mask_model import Canvas, MaskObject, PetGrid
from petcohort.storage.dicom_read import read_dataset

__all__ = ["paint_seg", "paint_seg_resampled", "paint_rtstruct"]

_AXIS_TOL = 1e-4          # direction cosines this close to 0/1 count as axis-aligned (as dicom_read)
_SPACING_RTOL = 1e-3      # pixel spacing of a SEG frame vs the PET (DS strings carry ~7 digits)
_INPLANE_TOL = 0.1        # in-plane origin offset, in pixels, that still counts as the same grid


# -- DICOM SEG ---------------------------------------------------------------------------------------------
def _fg_item(ds: Dataset, index: int, keyword: str) -> Dataset | None:
    """Functional group item of frame ``index``: per-frame first, else shared (PS3.3 C.7.6.16)."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    groups = [per_frame[index]] if per_frame is not None and index < len(per_frame) else []
    groups += list(ds.get("SharedFunctionalGroupsSequence", []))[:1]
    for group in groups:
        seq = group.get(keyword)
        if seq:
            return seq[0]
    return None


def _axis(vector: np.ndarray) -> int | None:
    """Index of the LPS axis a direction cosine vector lies along, None if oblique."""
    k = int(np.argmax(np.abs(vector)))
    return k if np.allclose(np.abs(vector), np.eye(3)[k], atol=_AXIS_TOL) else None


def _inplane(grid: PetGrid, iop: np.ndarray, ipp: np.ndarray, pixel: np.ndarray,
             frame_shape: tuple[int, int]) -> tuple[slice, slice, bool, bool]:
    """Grid rows/cols covered by a frame and whether its rows/cols run against the grid's axes."""
    row_axis, col_axis = _axis(iop[:3]), _axis(iop[3:])
    if row_axis is None or col_axis is None:
        raise DicomError("MASK_OBLIQUE", f"SEG frames have ImageOrientationPatient {iop.round(5).tolist()}, not "
                         "axis-aligned; oblique segmentations are refused")
    if (row_axis, col_axis) != (0, 1):
        raise DicomError("MASK_GRID_MISMATCH", "SEG frames are not axial with rows along x (orientation "
                         f"{iop.round(5).tolist()}); they cannot lie on the PET grid")
    _, sy, sx = grid.spacing
    if not (np.isclose(pixel[0], sy, rtol=_SPACING_RTOL) and np.isclose(pixel[1], sx, rtol=_SPACING_RTOL)):
        raise DicomError("MASK_GRID_MISMATCH", f"SEG pixel spacing {pixel.round(4).tolist()} mm differs from the "
                         f"PET's {[round(sy, 4), round(sx, 4)]} mm")
    out = []
    for along, offset, step, n, size in ((iop[3:], ipp[1] - grid.origin[1], sy, frame_shape[0], grid.shape[1]),
                                         (iop[:3], ipp[0] - grid.origin[2], sx, frame_shape[1], grid.shape[2])):
        start = offset / step
        if abs(start - round(start)) > _INPLANE_TOL:
            raise DicomError("MASK_GRID_MISMATCH", f"SEG frames are shifted by {start - round(start):+.2f} pixel "
                             "against the PET grid")
        sign = 1 if along[np.argmax(np.abs(along))] > 0 else -1
        first, last = int(round(start)), int(round(start)) + sign * (n - 1)
        lo, hi = min(first, last), max(first, last)
        if lo < 0 or hi >= size:
            raise DicomError("MASK_GRID_MISMATCH", f"SEG frames ({frame_shape[0]} x {frame_shape[1]}) extend "
                             f"beyond the PET grid ({grid.shape[1]} x {grid.shape[2]})")
        out.append((slice(lo, hi + 1), sign < 0))
    return out[0][0], out[1][0], out[0][1], out[1][1]


def _floats(item: Dataset | None, keyword: str, n: int, what: str) -> np.ndarray:
    value = None if item is None else item.get(keyword)
    if value is None or len(value) != n:
        raise DicomError("MASK_MALFORMED", f"SEG {what}: {keyword} missing or not {n} values")
    return np.asarray([float(v) for v in value], dtype=np.float64)


class _SegFrames:
    """Where each SEG frame goes on the grid (cached per distinct geometry) and what it holds."""

    def __init__(self, ds: Dataset, grid: PetGrid) -> None:
        self.ds, self.grid = ds, grid
        self.slice_of_uid = {uid: z for z, uid in enumerate(grid.sop_uids)}
        self.frame_shape = (int(ds.Rows), int(ds.Columns))
        self.placed: dict[tuple[int, int], float] = {}   # (segment, slice) -> frame z, to catch finer SEG grids
        self._inplane_cache: dict[tuple, tuple] = {}

    def segment(self, i: int) -> int:
        item = _fg_item(self.ds, i, "SegmentIdentificationSequence")
        if item is None or "ReferencedSegmentNumber" not in item:
            raise DicomError("MASK_MALFORMED", f"SEG frame {i + 1}: no ReferencedSegmentNumber")
        return int(item.ReferencedSegmentNumber)

    def _source_slice(self, i: int) -> int | None:
        derivation = _fg_item(self.ds, i, "DerivationImageSequence")
        for source in (derivation.get("SourceImageSequence", []) if derivation is not None else []):
            z = self.slice_of_uid.get(str(source.get("ReferencedSOPInstanceUID", "")))
            if z is not None:
                return z
        return None

    def place(self, i: int, number: int) -> tuple[int, slice, slice, bool, bool] | None:
        """(slice, rows, cols, flip rows, flip cols) of frame ``i``, None when it lies off the PET slices."""
        what = f"frame {i + 1}"
        ipp = _floats(_fg_item(self.ds, i, "PlanePositionSequence"), "ImagePositionPatient", 3, what)
        iop = _floats(_fg_item(self.ds, i, "PlaneOrientationSequence"), "ImageOrientationPatient", 6, what)
        pixel = _floats(_fg_item(self.ds, i, "PixelMeasuresSequence"), "PixelSpacing", 2, what)
        key = (tuple(iop), tuple(ipp[:2]), tuple(pixel))
        if key not in self._inplane_cache:
            self._inplane_cache[key] = _inplane(self.grid, iop, ipp, pixel, self.frame_shape)
        z_pos = self.grid.slice_of(float(ipp[2]))
        z_src = self._source_slice(i)
        if z_src is not None and z_pos != z_src:
            raise DicomError("MASK_GRID_MISMATCH", f"SEG {what}: its position is not that of the PET slice it "
                             "references")
        z = z_src if z_src is not None else z_pos
        if z is None:
            return None
        previous = self.placed.setdefault((number, z), float(ipp[2]))
        if abs(previous - float(ipp[2])) > 0.05 * self.grid.spacing[0]:
            raise DicomError("MASK_GRID_MISMATCH", f"two SEG frames of segment #{number} at different positions "
                             f"fall on PET slice {z}: the SEG slices are finer than the PET's")
        return (z, *self._inplane_cache[key])


def _read_seg(path: str):
    import highdicom  # noqa: PLC0415  (heavy import, needed only for SEG objects)
    try:
        ds = read_dataset(path)
        if ds is None:
            raise DicomError("MASK_MALFORMED", "SEG object is not a DICOM file")
        return highdicom.seg.Segmentation.from_dataset(ds, copy=False)
    except PetCohortError:
        raise
    except Exception as exc:  # highdicom raises several types for invalid objects
        raise DicomError("MASK_MALFORMED", f"SEG object unreadable by highdicom ({type(exc).__name__})") from exc


def paint_seg(obj: MaskObject, canvas: Canvas) -> None:
    """Paint the canvas's wanted segments of a SEG whose frames lie on the PET grid, frame by frame.

    Raises
    ------
    DicomError
        MASK_MALFORMED, MASK_OBLIQUE; MASK_GRID_MISMATCH when a frame is not on
        the PET grid (the caller may then use :func:`paint_seg_resampled`).
    """
    seg = _read_seg(obj.path)
    seg_type = str(seg.SegmentationType).upper()
    frames = _SegFrames(seg, canvas.grid)
    threshold = 0.5 * float(seg.get("MaximumFractionalValue", 255) or 255) if seg_type == "FRACTIONAL" else None
    for i in range(int(seg.get("NumberOfFrames", 1) or 1)):
        numbers = [None] if seg_type == "LABELMAP" else [frames.segment(i)]
        if numbers[0] is not None and not canvas.wanted(numbers[0]):
            continue
        try:
            stored = seg.get_stored_frame(i + 1)
        except Exception as exc:  # decoding errors of any kind: the file is broken
            raise DicomError("MASK_MALFORMED", f"SEG frame {i + 1}: pixel data unreadable "
                             f"({type(exc).__name__})") from exc
        if seg_type == "LABELMAP":   # stored values are segment numbers (PS3.3 C.8.20.2.3)
            numbers = [int(v) for v in np.unique(stored) if v and canvas.wanted(int(v))]
        for number in numbers:
            mask = (stored == number if seg_type == "LABELMAP"
                    else stored >= threshold if threshold is not None else stored != 0)
            if not mask.any():
                continue
            where = frames.place(i, number)
            if where is None:
                raise DicomError("MASK_GRID_MISMATCH", f"SEG frame {i + 1} of segment "
                                 f"{canvas.segments[number].describe()} lies off the PET slices")
            z, rows, cols, flip_r, flip_c = where
            canvas.paint(number, z, rows, cols, mask[::-1 if flip_r else 1, ::-1 if flip_c else 1])


def paint_seg_resampled(obj: MaskObject, canvas: Canvas, mismatch: DicomError) -> None:
    """Paint a SEG whose frames do not lie on the PET grid: nearest SEG voxel at each PET voxel centre.

    The SEG's own volume geometry comes from highdicom (``get_volume``: frame
    positions and orientation; fractional values rescaled to [0, 1], kept at
    >= 0.5). A SEG whose frames do not form a regular volume keeps the
    original ``MASK_GRID_MISMATCH``. Recorded as ``MASK_RESAMPLED``.
    """
    seg = _read_seg(obj.path)
    grid = canvas.grid
    wanted = [n for n in sorted(canvas.segments) if canvas.wanted(n)]
    if not wanted:
        return
    try:
        volume = seg.get_volume(segment_numbers=wanted, combine_segments=False, dtype=np.float32,
                                rescale_fractional=True)
    except Exception:  # irregular frames, missing positions: the exact-grid error stands
        raise mismatch from None
    data = np.asarray(volume.array)
    if data.ndim == 3:
        data = data[..., np.newaxis]
    inverse = np.linalg.inv(np.asarray(volume.affine, dtype=np.float64))
    nz, ny, nx = grid.shape
    oz, oy, ox = grid.origin
    sz, sy, sx = grid.spacing
    yy, xx = np.meshgrid(oy + np.arange(ny) * sy, ox + np.arange(nx) * sx, indexing="ij")
    limits = np.asarray(data.shape[:3]) - 1
    for z in range(nz):
        lps = np.stack([xx.ravel(), yy.ravel(), np.full(xx.size, oz + z * sz), np.ones(xx.size)])
        idx = np.rint((inverse @ lps)[:3]).astype(np.int64)
        inside = np.all((idx >= 0) & (idx <= limits[:, None]), axis=0)
        if not inside.any():
            continue
        for channel, number in enumerate(wanted):
            values = np.zeros(xx.size, dtype=bool)
            values[inside] = data[idx[0, inside], idx[1, inside], idx[2, inside], channel] >= 0.5
            canvas.paint(number, z, slice(None), slice(None), values.reshape(ny, nx))
    canvas.warnings.append(("MASK_RESAMPLED", "the SEG frames lie on another grid of the PET's frame of reference "
                            f"({mismatch.message}); each PET voxel took the nearest SEG voxel at its centre"))


# -- RTSTRUCT ----------------------------------------------------------------------------------------------
def _read_rtstruct(path: str) -> Dataset:
    try:
        ds = read_dataset(path)
    except Exception as exc:  # pydicom raises several types for truncated or invalid files
        raise DicomError("MASK_MALFORMED", f"RTSTRUCT unreadable ({type(exc).__name__})") from exc
    if ds is None:
        raise DicomError("MASK_MALFORMED", "RTSTRUCT object is not a DICOM file")
    return ds


def _contour_plane(contour: Dataset, grid: PetGrid, what: str) -> tuple[float, np.ndarray]:
    """Plane z (mm) and (row, col) vertices of one contour."""
    try:
        points = np.asarray([float(v) for v in contour.ContourData], dtype=np.float64)
    except (AttributeError, TypeError, ValueError) as exc:
        raise DicomError("MASK_MALFORMED", f"{what}: ContourData missing or not numbers") from exc
    if points.size % 3:
        raise DicomError("MASK_MALFORMED", f"{what}: ContourData holds {points.size} values, not x/y/z triplets")
    points = points.reshape(-1, 3)
    if np.ptp(points[:, 2]) > 0.01 * grid.spacing[0]:
        raise DicomError("MASK_OBLIQUE", f"{what}: the contour is not on an axial plane (z spans "
                         f"{np.ptp(points[:, 2]):.2f} mm); oblique contours are refused")
    oz, oy, ox = grid.origin
    _, sy, sx = grid.spacing
    return float(points[:, 2].mean()), np.stack([(points[:, 1] - oy) / sy, (points[:, 0] - ox) / sx], axis=1)


def _paint_planes(canvas: Canvas, number: int, planes: list[tuple[int, float, np.ndarray]]) -> None:
    """Fill each slice from its nearest contour plane(s): even-odd within a plane, union across tied planes."""
    grid = canvas.grid
    tol = 0.01 * grid.spacing[0]
    for z in sorted({k for k, _, _ in planes}):
        here = [(zmm, poly) for k, zmm, poly in planes if k == z]
        centre = grid.origin[0] + z * grid.spacing[0]
        nearest = min(abs(zmm - centre) for zmm, _ in here)
        here = sorted((zmm, i, poly) for i, (zmm, poly) in enumerate(here) if abs(zmm - centre) <= nearest + tol)
        mask = np.zeros(grid.shape[1:], dtype=bool)
        while here:
            plane_z = here[0][0]
            same = [poly for zmm, _, poly in here if abs(zmm - plane_z) <= tol]
            here = [h for h in here if abs(h[0] - plane_z) > tol]
            mask |= fill_polygons(same, grid.shape[1:])
        canvas.paint(number, z, slice(None), slice(None), mask)


def paint_rtstruct(obj: MaskObject, canvas: Canvas) -> set[int]:
    """Paint the selected ROIs; returns the ROI numbers whose closed contours all lie off the PET slices."""
    ds = _read_rtstruct(obj.path)
    skipped: dict[str, int] = {}
    off_rois: set[int] = set()
    for item in ds.get("ROIContourSequence", []):
        number = int(item.get("ReferencedROINumber", -1))
        if not canvas.wanted(number):
            continue
        info = canvas.segments[number]
        planes, closed, off = [], 0, 0
        for j, contour in enumerate(item.get("ContourSequence", [])):
            kind = str(contour.get("ContourGeometricType", "")).upper()
            if kind not in ("CLOSED_PLANAR", "CLOSEDPLANAR_XOR"):   # POINT / OPEN_PLANAR / OPEN_NONPLANAR
                skipped[kind or "untyped"] = skipped.get(kind or "untyped", 0) + 1
                continue
            closed += 1
            zmm, poly = _contour_plane(contour, canvas.grid, f"ROI {info.describe()} contour {j + 1}")
            z = canvas.grid.slice_of(zmm)
            if z is None:
                off += 1
            else:
                planes.append((z, zmm, poly))
        if closed and off == closed:
            off_rois.add(number)
            canvas.warnings.append(("MASK_CONTOURS_OFF_GRID", f"all {closed} contours of ROI {info.describe()} "
                                    "lie off the PET slices"))
        elif off:
            canvas.warnings.append(("MASK_CONTOURS_PARTLY_OFF_GRID", f"{off} of {closed} contours of ROI "
                                    f"{info.describe()} lie off the PET slices and were not used"))
        _paint_planes(canvas, number, planes)
    if skipped:
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(skipped.items()))
        canvas.warnings.append(("MASK_CONTOURS_IGNORED", f"contours that enclose no area were ignored ({counts}); "
                                "only CLOSED_PLANAR contours are masks"))
    return off_rois
