"""DICOM SEG and RTSTRUCT objects as lesion and organ masks on the PET grid.

Rules (docs/methods.md, "DICOM masks and series selection"):

* A mask object is matched to the PET by referenced series, else by
  FrameOfReferenceUID (:func:`match_mask`; the caller records which).
* DICOM SEG (PS3.3 A.51, C.8.20): frames are read with highdicom (which
  unpacks 1-bit frames that are not byte-aligned, PS3.5 8.1.1) and mapped to
  PET slices through the referenced source instances (Derivation Image
  Functional Group, C.7.6.16.2.6), else through each frame's
  ImagePositionPatient (tolerance half a slice). BINARY, FRACTIONAL (stored
  value >= 0.5 x MaximumFractionalValue) and LABELMAP types.
* RTSTRUCT (PS3.3 A.19, C.8.8.6): each CLOSED_PLANAR contour is a polygon on
  one plane; a voxel is inside when its centre is inside (even-odd, so nested
  contours are holes: :func:`petcohort.engine.kernels.polygon.fill_polygons`);
  a contour plane maps to the nearest PET slice within half the slice spacing.
  When several planes of one ROI map to one slice, the plane nearest to the
  slice centre is used (ties: union), i.e. the voxel centre is sampled.
* Roles: a segment is a lesion, liver, bone, aorta or other, by coded concept
  where present, else by label (TotalSegmentator class names included).

Messages name segment labels and numbers only, never UIDs or paths.

This module reads headers and rasterises; the roles live in
:mod:`petcohort.storage.dicom_roles`, the data classes in
:mod:`petcohort.storage.dicom_mask_model` and the SEG/RTSTRUCT pixel code in
:mod:`petcohort.storage.dicom_mask_pixels`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from pydicom.dataset import Dataset

from petcohort.engine.errors import DicomError
from petcohort.storage.dicom_mask_model import Canvas, MaskObject, PetGrid, SegmentInfo
from petcohort.storage.dicom_mask_pixels import paint_rtstruct, paint_seg, paint_seg_resampled
from petcohort.storage.dicom_read import LABELMAP_SEG_SOP_CLASS, RTSTRUCT_SOP_CLASS, SEG_SOP_CLASS, is_mask_object
from petcohort.storage.dicom_roles import ORGAN_ROLES, ROLES, roi_role, segment_role
from petcohort.storage.dicom_select import compile_pattern

__all__ = ["SEG_SOP_CLASS", "LABELMAP_SEG_SOP_CLASS", "RTSTRUCT_SOP_CLASS", "ROLES", "SegmentInfo", "MaskObject",
           "PetGrid", "RasterisedMask", "is_mask_object", "read_mask_header", "match_mask", "rasterise_mask",
           "lesion_segments"]


# -- header level ------------------------------------------------------------------------------------------
def _first_code(item: Dataset, keyword: str) -> tuple[str | None, str]:
    """``designator:value`` and meaning of the first item of a code sequence (value of any length, PS3.3 8.8)."""
    seq = item.get(keyword)
    if not seq:
        return None, ""
    code = seq[0]
    value = code.get("CodeValue") or code.get("LongCodeValue") or code.get("URNCodeValue")
    designator = code.get("CodingSchemeDesignator")
    key = f"{designator}:{value}" if value and designator else None
    return key, str(code.get("CodeMeaning", ""))


def _kind(ds: Dataset) -> str:
    sop = str(ds.get("SOPClassUID", ""))
    return "RTSTRUCT" if sop == RTSTRUCT_SOP_CLASS or (not sop and ds.get("Modality") == "RTSTRUCT") else "SEG"


def _malformed(kind: str, what: str) -> DicomError:
    return DicomError("MASK_MALFORMED", f"{kind} object: {what}")


def _seg_segments(ds: Dataset) -> tuple[SegmentInfo, ...]:
    out = []
    for item in ds.SegmentSequence:
        key, meaning = _first_code(item, "SegmentedPropertyTypeCodeSequence")
        label = str(item.get("SegmentLabel", "") or "")
        category, _ = _first_code(item, "SegmentedPropertyCategoryCodeSequence")
        role = segment_role(key, meaning, label, category)
        out.append(SegmentInfo(number=int(item.SegmentNumber), label=label, role=role, code=key))
    return tuple(out)


def _seg_referenced_series(ds: Dataset) -> set[str]:
    # Common Instance Reference Module (PS3.3 C.12.2): same-study and other-study references
    series = {str(s.SeriesInstanceUID) for s in ds.get("ReferencedSeriesSequence", []) if "SeriesInstanceUID" in s}
    for study in ds.get("StudiesContainingOtherReferencedInstancesSequence", []):
        series |= {str(s.SeriesInstanceUID) for s in study.get("ReferencedSeriesSequence", [])
                   if "SeriesInstanceUID" in s}
    return series


def _rt_segments(ds: Dataset) -> tuple[SegmentInfo, ...]:
    observations = {int(o.ReferencedROINumber): o for o in ds.get("RTROIObservationsSequence", [])
                    if "ReferencedROINumber" in o}
    out = []
    for roi in ds.StructureSetROISequence:
        number = int(roi.ROINumber)
        label = str(roi.get("ROIName", "") or "")
        obs = observations.get(number, Dataset())
        interpreted = str(obs.get("RTROIInterpretedType", "") or "").upper()
        key, meaning = _first_code(obs, "RTROIIdentificationCodeSequence")
        role = roi_role(interpreted, key, meaning, label)
        out.append(SegmentInfo(number=number, label=label, role=role, code=key))
    return tuple(out)


def _rt_references(ds: Dataset) -> tuple[str | None, set[str]]:
    frames = [str(f.FrameOfReferenceUID) for f in ds.get("ReferencedFrameOfReferenceSequence", [])
              if "FrameOfReferenceUID" in f]
    roi_frames = [str(r.ReferencedFrameOfReferenceUID) for r in ds.StructureSetROISequence
                  if "ReferencedFrameOfReferenceUID" in r]
    series = {str(s.SeriesInstanceUID)
              for f in ds.get("ReferencedFrameOfReferenceSequence", [])
              for st in f.get("RTReferencedStudySequence", [])
              for s in st.get("RTReferencedSeriesSequence", []) if "SeriesInstanceUID" in s}
    frame = (roi_frames or frames or [ds.get("FrameOfReferenceUID")])[0]
    return frame, series


def read_mask_header(path: str, ds: Dataset) -> MaskObject:
    """Describe a SEG or RTSTRUCT from its header (``ds`` read with ``stop_before_pixels=True``).

    Raises
    ------
    DicomError
        MASK_MALFORMED when the object is not a mask or misses an essential
        attribute (StudyInstanceUID, SegmentSequence/SegmentationType,
        StructureSetROISequence, segment or ROI numbers).
    """
    if not is_mask_object(ds):
        raise DicomError("MASK_MALFORMED", "the object is neither a DICOM SEG nor an RTSTRUCT")
    kind = _kind(ds)
    if not ds.get("StudyInstanceUID"):
        raise _malformed(kind, "StudyInstanceUID is missing")
    try:
        if kind == "SEG":
            if not ds.get("SegmentSequence"):
                raise _malformed(kind, "SegmentSequence is missing or empty")
            seg_type = str(ds.get("SegmentationType", "")).upper()
            if seg_type not in ("BINARY", "FRACTIONAL", "LABELMAP"):
                raise _malformed(kind, f"SegmentationType {seg_type!r} is not BINARY, FRACTIONAL or LABELMAP")
            segments, frame = _seg_segments(ds), ds.get("FrameOfReferenceUID")
            series, fractional = _seg_referenced_series(ds), seg_type == "FRACTIONAL"
        else:
            if not ds.get("StructureSetROISequence"):
                raise _malformed(kind, "StructureSetROISequence is missing or empty")
            segments, (frame, series), fractional = _rt_segments(ds), _rt_references(ds), False
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, DicomError):
            raise
        raise _malformed(kind, f"unreadable header ({type(exc).__name__})") from exc
    numbers = [s.number for s in segments]
    if len(set(numbers)) != len(numbers):
        raise _malformed(kind, f"segment/ROI numbers repeat: {sorted(numbers)}")
    return MaskObject(kind=kind, path=str(path), study_uid=str(ds.StudyInstanceUID),
                      frame_of_reference_uid=str(frame) if frame else None,
                      referenced_series_uids=frozenset(series), segments=segments, fractional=fractional)


def match_mask(obj: MaskObject, *, pet_series_uid: str, pet_frame_uid: str | None) -> str | None:
    """How a mask object belongs to a PET series: ``"referenced_series"``, ``"frame_of_reference"`` or None."""
    if pet_series_uid and pet_series_uid in obj.referenced_series_uids:
        return "referenced_series"
    if pet_frame_uid and obj.frame_of_reference_uid == pet_frame_uid:
        return "frame_of_reference"
    return None


# -- rasterising -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RasterisedMask:
    """Masks of one mask object on the PET grid.

    Attributes
    ----------
    lesions : (Z, Y, X) ndarray of uint16
        ``k`` = the k-th entry of ``lesion_segments`` (1-based), 0 = none.
    organs : dict of str -> (Z, Y, X) ndarray of uint8
        ``liver``/``bone``/``aorta`` (present roles only): union of that role's segments.
    ignored : segments of role "other" or lesions not selected by the label pattern.
    warnings : (reason, message) pairs, e.g. MASK_EMPTY_SEGMENT.
    """

    lesions: np.ndarray
    lesion_segments: tuple[SegmentInfo, ...]
    organs: dict[str, np.ndarray]
    ignored: tuple[SegmentInfo, ...]
    warnings: tuple[tuple[str, str], ...]


def lesion_segments(obj: MaskObject, pattern: re.Pattern | None = None) -> list[SegmentInfo]:
    """The segments taken as lesions: those whose label matches ``pattern`` (``--mask-label``), else role "lesion"."""
    return [s for s in obj.segments if (s.role == "lesion" if pattern is None else pattern.search(s.label))]


def _select(obj: MaskObject, label_regex: str | None, with_lesions: bool) -> tuple[list[SegmentInfo],
                                                                                    dict[int, str], list[SegmentInfo]]:
    pattern = compile_pattern(label_regex, "--mask-label")
    chosen = {s.number for s in lesion_segments(obj, pattern)} if with_lesions else set()
    lesions = [s for s in obj.segments if s.number in chosen]
    rest = [s for s in obj.segments if s.number not in chosen]
    organs = {s.number: s.role for s in rest if s.role in ORGAN_ROLES}
    ignored = [s for s in rest if s.role not in ORGAN_ROLES]
    return lesions, organs, ignored


def _labels(segments: Iterable[SegmentInfo]) -> str:
    return ", ".join(f"{s.describe()} ({s.role})" for s in segments) or "none"


def rasterise_mask(obj: MaskObject, grid: PetGrid, *, label_regex: str | None = None,
                   lesions: bool = True) -> RasterisedMask:
    """Read a SEG or RTSTRUCT and paint its lesion and organ segments on the PET grid.

    Parameters
    ----------
    obj : MaskObject
        From :func:`read_mask_header`; its file is read again here.
    grid : PetGrid
    label_regex : str, optional
        ``--mask-label``: the lesion segments are exactly those whose label
        matches (``re.search``, case-insensitive). None: the segments of role
        "lesion". Organ roles come from codes/labels either way.
    lesions : bool
        False: organs only (no segment is taken as a lesion, ``lesions`` is
        all zero, lesion-role segments are ignored); for an object that holds
        organs but is not the study's lesion source.

    Raises
    ------
    DicomError
        MASK_MALFORMED, MASK_GRID_MISMATCH, MASK_OBLIQUE, MASK_OVERLAPPING_LESIONS,
        MASK_NO_LESION_SEGMENT, MASK_EMPTY, MASK_CONTOURS_OFF_GRID. A SEG whose frames lie on another
        regular grid of the frame of reference is resampled (warning ``MASK_RESAMPLED``), not refused.
    InputError
        BAD_REGEX.
    """
    chosen, organ_role, ignored = _select(obj, label_regex, lesions)
    if lesions and not chosen:
        how = f"matches --mask-label {label_regex!r}" if label_regex is not None else "is a lesion by code or label"
        raise DicomError("MASK_NO_LESION_SEGMENT", f"no segment of the {obj.kind} {how}; segments: "
                         f"{_labels(obj.segments)}; pass --mask-label to choose the lesion segments")
    canvas = Canvas(grid=grid, lesion_ids={s.number: i + 1 for i, s in enumerate(chosen)},
                     organ_role=organ_role, segments={s.number: s for s in obj.segments})
    off_grid: set[int] = set()
    if obj.kind == "SEG":
        try:
            paint_seg(obj, canvas)
        except DicomError as exc:
            if exc.reason != "MASK_GRID_MISMATCH":
                raise
            # frames on another grid of the same frame of reference (e.g. a TotalSegmentator SEG made on the
            # CT): sample the SEG at the PET voxel centres, as RTSTRUCT contours are sampled
            canvas = Canvas(grid=grid, lesion_ids=canvas.lesion_ids, organ_role=organ_role,
                             segments=canvas.segments)
            paint_seg_resampled(obj, canvas, exc)
    else:
        off_grid = paint_rtstruct(obj, canvas)
    return _finish(canvas, chosen, ignored, off_grid)


def _finish(canvas: Canvas, lesions: list[SegmentInfo], ignored: list[SegmentInfo],
            off_grid: set[int]) -> RasterisedMask:
    """Drop empty lesion segments (warning), renumber the rest 1..n, refuse when none is left."""
    kept = [s for s in lesions if s.number in canvas.painted]
    for s in lesions:
        if s.number not in canvas.painted and s.number not in off_grid:
            canvas.warnings.append(("MASK_EMPTY_SEGMENT", f"lesion segment {s.describe()} is empty on the PET "
                                    "grid and was dropped"))
    if lesions and not kept:
        if off_grid & {s.number for s in lesions}:
            raise DicomError("MASK_CONTOURS_OFF_GRID", f"the contours of every lesion ROI "
                             f"({_labels(lesions)}) lie off the PET slices")
        raise DicomError("MASK_EMPTY", f"every lesion segment is empty on the PET grid: {_labels(lesions)}")
    # renumber the kept lesions 1..n in segment order
    lut = np.zeros(len(lesions) + 1, dtype=np.uint16)
    for new, s in enumerate(kept, start=1):
        lut[canvas.lesion_ids[s.number]] = new
    canvas.lesions = lut[canvas.lesions] if len(kept) < len(lesions) else canvas.lesions
    for number, role in canvas.organ_role.items():
        if number not in canvas.painted and number not in off_grid:
            canvas.warnings.append(("MASK_EMPTY_SEGMENT", f"{role} segment {canvas.segments[number].describe()} "
                                    "is empty on the PET grid"))
    return RasterisedMask(lesions=canvas.lesions, lesion_segments=tuple(kept), organs=dict(canvas.organs),
                          ignored=tuple(ignored), warnings=tuple(canvas.warnings))
