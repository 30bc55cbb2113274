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
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from petcohort.engine.errors import DicomError, PetCohortError
from petcohort.engine.kernels.organs import TOTALSEG_V2_ORGANS
from petcohort.engine.kernels.polygon import fill_polygons
from petcohort.storage.dicom_read import (LABELMAP_SEG_SOP_CLASS, RTSTRUCT_SOP_CLASS, SEG_SOP_CLASS, is_mask_object,
                                          read_dataset, slice_geometry)
from petcohort.storage.dicom_select import compile_pattern

__all__ = ["SEG_SOP_CLASS", "LABELMAP_SEG_SOP_CLASS", "RTSTRUCT_SOP_CLASS", "ROLES", "SegmentInfo", "MaskObject",
           "PetGrid", "RasterisedMask", "is_mask_object", "read_mask_header", "match_mask", "rasterise_mask",
           "lesion_segments"]

ROLES = ("lesion", "liver", "bone", "aorta", "other")
ORGAN_ROLES = ("liver", "bone", "aorta")
_AXIS_TOL = 1e-4          # direction cosines this close to 0/1 count as axis-aligned (as dicom_read)
_SPACING_RTOL = 1e-3      # pixel spacing of a SEG frame vs the PET (DS strings carry ~7 digits)
_INPLANE_TOL = 0.1        # in-plane origin offset, in pixels, that still counts as the same grid


# -- roles -------------------------------------------------------------------------------------------------
def _code_key(code) -> str:
    return f"{code.scheme_designator}:{code.value}"


# Coded concepts (SegmentedPropertyType, RT ROI identification codes) with a role; values taken from pydicom's
# copy of the DICOM code dictionaries (PS3.16) rather than typed in.
_ROLE_CODES: dict[str, str] = {
    **{_code_key(c): "lesion" for c in (codes.SCT.Neoplasm, codes.SCT.NeoplasmMetastatic, codes.SCT.Lesion,
                                        codes.SCT.Mass, codes.SCT.Metastasis, codes.SCT.Lymphoma,
                                        codes.SCT.LymphNode, codes.SCT.GrossTumorVolume,
                                        codes.SCT.MorphologicallyAbnormalStructure)},
    _code_key(codes.SCT.Liver): "liver",
    **{_code_key(c): "bone" for c in (codes.SCT.Bone, codes.SCT.BoneTissue, codes.SCT.Vertebra,
                                      codes.SCT.StructureOfVertebralColumn)},
    **{_code_key(c): "aorta" for c in (codes.SCT.Aorta, codes.SCT.ThoracicAorta, codes.SCT.DescendingAorta,
                                       codes.SCT.AscendingAorta, codes.SCT.AbdominalAorta,
                                       codes.SCT.AorticArch)},
}
# Older SEGs (e.g. dcmqi before 2019, many TCIA collections) use the retired SNOMED RT ("SRT") designators for
# the same concepts; pydicom ships the standard's SRT <-> SCT mapping (PS3.16 Annex O), used here.
def _srt_equivalents() -> dict[str, str]:
    from pydicom.sr._snomed_dict import mapping  # noqa: PLC0415

    sct_to_srt = mapping.get("SCT", {})
    return {f"SRT:{sct_to_srt[key.split(':', 1)[1]]}": role for key, role in _ROLE_CODES.items()
            if key.startswith("SCT:") and key.split(":", 1)[1] in sct_to_srt}


_ROLE_CODES.update(_srt_equivalents())
# "Morphologically abnormal structure" as the *category* of an otherwise unknown segment means a lesion
_LESION_CATEGORY = _code_key(codes.SCT.MorphologicallyAbnormalStructure)
_LESION_CATEGORIES = {_LESION_CATEGORY} | {k for k, r in _srt_equivalents().items()
                                          if r == "lesion" and k.endswith(":M-01000")}

# Text rules, applied to labels and code meanings once lower-cased with punctuation and "_" turned to spaces.
# Lesion first: "liver metastasis" or "bone lesion" are lesions.
_LESION_TEXT = re.compile(r"\b(lesions?|tumou?rs?|gtv\w*|metasta\w*|mets?|mass(es)?|nodules?|lymph ?nodes?|nodes?"
                          r"|neoplasm\w*|malignan\w*|carcinoma\w*|lymphoma\w*|cancer\w*|hot ?spots?|foc(us|i))\b")
_ORGAN_TEXT = {
    "liver": re.compile(r"\bliver\b"),
    # "vertebral" left out on purpose: "vertebral artery" is not bone
    "bone": re.compile(r"\b(bones?|skeleton|skeletal|osseous|vertebrae?|vertebral column|spine|ribs?|sacrum"
                       r"|coccyx|skull|cranium|sternum|femurs?|humerus|scapula|clavicles?|clavicula|ilium"
                       r"|ischium)\b"),
    "aorta": re.compile(r"\b(aorta|aortic arch)\b"),
}
# TotalSegmentator v2 class names (engine/kernels/organs.py); its organs outside ORGAN_ROLES are "other"
_TOTALSEG_ROLE = {name.lower(): (organ if organ in ORGAN_ROLES else "other")
                  for organ, classes in TOTALSEG_V2_ORGANS.items() for name in classes.values()}
# RTROIInterpretedType (PS3.3 C.8.8.8.1): GTV is a lesion; planning volumes and devices never are
_RT_NOT_ANATOMY = {"CTV", "PTV", "ITV", "TREATED_VOLUME", "IRRAD_VOLUME", "EXTERNAL", "BOLUS", "MARKER",
                   "REGISTRATION", "ISOCENTER", "CONTRAST_AGENT", "CAVITY", "SUPPORT", "FIXATION",
                   "DOSE_REGION", "CONTROL", "DOSE_MEASUREMENT", "BRACHY_CHANNEL", "BRACHY_ACCESSORY",
                   "BRACHY_SRC_APP", "BRACHY_CHNL_SHLD"}


def _role_from_text(text: str) -> str | None:
    norm = re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()
    if not norm:
        return None
    if _LESION_TEXT.search(norm):
        return "lesion"
    totalseg = _TOTALSEG_ROLE.get(norm.replace(" ", "_"))
    if totalseg is not None:
        return totalseg
    return next((role for role, rx in _ORGAN_TEXT.items() if rx.search(norm)), None)


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


def _role_from_code(key: str | None, meaning: str) -> str | None:
    if key is None and not meaning:
        return None
    return _ROLE_CODES.get(key or "") or _role_from_text(meaning)


# -- header level ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SegmentInfo:
    """One segment (SEG) or ROI (RTSTRUCT): SegmentNumber/ROINumber, label, role, coded type if any."""

    number: int
    label: str
    role: str
    code: str | None = None

    def describe(self) -> str:
        return f"#{self.number} {self.label!r}"


@dataclass(frozen=True)
class MaskObject:
    """Header-level description of a DICOM SEG or RTSTRUCT file (no pixels, no contours)."""

    kind: str
    path: str
    study_uid: str
    frame_of_reference_uid: str | None
    referenced_series_uids: frozenset[str]
    segments: tuple[SegmentInfo, ...]
    fractional: bool = False


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
        role = (_role_from_code(key, meaning) or _role_from_text(label)
                or ("lesion" if category in _LESION_CATEGORIES else "other"))
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
        if interpreted == "GTV":
            role = "lesion"
        elif interpreted in _RT_NOT_ANATOMY:
            role = "other"
        else:  # ORGAN, AVOIDANCE, empty or unknown: decided by code, else by name
            role = _role_from_code(key, meaning) or _role_from_text(label) or "other"
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


# -- grid --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PetGrid:
    """The PET voxel grid in the contracts' convention (axis-aligned, (Z, Y, X), LPS mm).

    ``sop_uids[z]`` is the SOPInstanceUID of slice ``z`` (empty when unknown).
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    sop_uids: tuple[str, ...] = ()

    @classmethod
    def from_headers(cls, headers: Sequence[Dataset]) -> "PetGrid":
        """The grid of an axial image series from its slice headers (any order; any modality)."""
        if not headers:
            raise DicomError("DICOM_NO_SERIES", "no slice headers to build a grid from")
        order, spacing, origin, _flips = slice_geometry(headers)
        uids = tuple(str(headers[i].get("SOPInstanceUID", "")) for i in order)
        shape = (len(headers), int(headers[0].Rows), int(headers[0].Columns))
        return cls(shape=shape, spacing=spacing, origin=origin, sop_uids=uids if all(uids) else ())

    def slice_of(self, z_mm: float) -> int | None:
        """Nearest slice to an LPS z within half the slice spacing, else None."""
        sz = self.spacing[0]
        k = int(np.clip(np.rint((z_mm - self.origin[0]) / sz), 0, self.shape[0] - 1))
        # inclusive bound (plus rounding slack): a plane exactly half a slice beyond the last one still maps
        return k if abs(z_mm - self.origin[0] - k * sz) <= sz / 2 * (1 + 1e-9) else None


# -- painting ----------------------------------------------------------------------------------------------
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


@dataclass
class _Canvas:
    """Shared output arrays: one uint16 lesion array, one uint8 array per organ role (never one per segment)."""

    grid: PetGrid
    lesion_ids: dict[int, int]                      # segment number -> provisional lesion id
    organ_role: dict[int, str]                      # segment number -> organ role
    segments: dict[int, SegmentInfo]
    lesions: np.ndarray = field(init=False)
    organs: dict[str, np.ndarray] = field(default_factory=dict)
    painted: set[int] = field(default_factory=set)  # segment numbers with at least one voxel
    warnings: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lesions = np.zeros(self.grid.shape, dtype=np.uint16)

    def wanted(self, number: int) -> bool:
        return number in self.lesion_ids or number in self.organ_role

    def paint(self, number: int, z: int, rows: slice, cols: slice, mask: np.ndarray) -> None:
        if not mask.any():
            return
        self.painted.add(number)
        if number in self.organ_role:
            role = self.organ_role[number]
            target = self.organs.setdefault(role, np.zeros(self.grid.shape, dtype=np.uint8))
            target[z, rows, cols][mask] = 1
            return
        ident = self.lesion_ids[number]
        region = self.lesions[z, rows, cols]
        clash = region[mask]
        clash = clash[(clash != 0) & (clash != ident)]
        if clash.size:
            other = next(n for n, i in self.lesion_ids.items() if i == int(clash[0]))
            raise DicomError("MASK_OVERLAPPING_LESIONS",
                             f"lesion segments {self.segments[other].describe()} and "
                             f"{self.segments[number].describe()} share {clash.size} voxel(s) on slice {z}; "
                             "overlapping lesions are refused (select one with --mask-label)")
        region[mask] = ident


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
    canvas = _Canvas(grid=grid, lesion_ids={s.number: i + 1 for i, s in enumerate(chosen)},
                     organ_role=organ_role, segments={s.number: s for s in obj.segments})
    off_grid: set[int] = set()
    if obj.kind == "SEG":
        try:
            _paint_seg(obj, canvas)
        except DicomError as exc:
            if exc.reason != "MASK_GRID_MISMATCH":
                raise
            # frames on another grid of the same frame of reference (e.g. a TotalSegmentator SEG made on the
            # CT): sample the SEG at the PET voxel centres, as RTSTRUCT contours are sampled
            canvas = _Canvas(grid=grid, lesion_ids=canvas.lesion_ids, organ_role=organ_role,
                             segments=canvas.segments)
            _paint_seg_resampled(obj, canvas, exc)
    else:
        off_grid = _paint_rtstruct(obj, canvas)
    return _finish(canvas, chosen, ignored, off_grid)


def _finish(canvas: _Canvas, lesions: list[SegmentInfo], ignored: list[SegmentInfo],
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


def _paint_seg(obj: MaskObject, canvas: _Canvas) -> None:
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


def _paint_seg_resampled(obj: MaskObject, canvas: _Canvas, mismatch: DicomError) -> None:
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


def _paint_planes(canvas: _Canvas, number: int, planes: list[tuple[int, float, np.ndarray]]) -> None:
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


def _paint_rtstruct(obj: MaskObject, canvas: _Canvas) -> set[int]:
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
