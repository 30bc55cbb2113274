"""The data model of DICOM masks: segment and mask-object descriptions, the PET grid and the paint canvas.

Shared by the header reading and rasterising (:mod:`petcohort.storage.dicom_masks`)
and the pixel side (:mod:`petcohort.storage.dicom_mask_pixels`), which both
import it; it imports neither, so there is no import cycle. Only
:meth:`PetGrid.from_headers` looks at DICOM (slice headers already read).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from pydicom.dataset import Dataset

from petcohort.engine.errors import DicomError
from petcohort.storage.dicom_read import slice_geometry

__all__ = ["SegmentInfo", "MaskObject", "PetGrid", "Canvas"]


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


@dataclass
class Canvas:
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
