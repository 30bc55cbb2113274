"""DICOM SEG and SR TID 1500 writers for lesion results (highdicom).

Pure writers: PET slice headers, a lesion label map and the ``quantify``
lesion rows in, highdicom objects out. No store access; the caller
(``pipelines/export_dicom.py``) finds the source series and checks geometry.

Standards relied on (cited where used):

- DICOM SEG: PS3.3 A.51 (Segmentation IOD), written by
  :class:`highdicom.seg.Segmentation` (BINARY, one segment per lesion).
  Segment category/type: (49755003, SCT, "Morphologically Abnormal
  Structure") from CID 7150 and (52988006, SCT, "Lesion") from CID 7151.
  Algorithm family for automatic sources: CID 7162.
- SR: Comprehensive 3D SR (PS3.3 A.35.13) holding a TID 1500 Measurement
  Report (:class:`highdicom.sr.MeasurementReport`); one TID 1411 Volumetric
  ROI group per lesion referencing its SEG segment, plus one TID 1501 group
  with the whole-body totals (it also carries the report of a study without
  lesions: TID 1500 needs at least one measurement group).
- Quantities: (126401, DCM, "SUVbw") and (126405/126406, DCM, "SUVlbm(...)")
  from CID 7180/7469, with the derivation (CID 7464) Maximum (56851009, SCT),
  Mean (373098007, SCT) or Peak Value Within ROI (126031, DCM); Volume
  (118565006, SCT) with method (126030, DCM, "Sum of segmented voxel method
  for volume") (CID 7474); Metabolic Volume (126032, DCM) and Total Lesion
  Glycolysis (126033, DCM) from CID 7466.
- Units (PS3.16 section 7.2.2, UCUM; SUV units from CID 85 as pydicom's
  concept dictionary, generated from PS3.16, spells them): ``g/ml{SUVbw}``,
  ``g/ml{SUVlbm(Janma)}``, ``g/ml{SUVlbm(James128)}``; ``ml``; TLG =
  SUVbw (g/ml) x volume (ml) in ``g`` (as the QIICR PET-IndiC Slicer
  plugin encodes 126033).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from petcohort.engine import __version__
from petcohort.engine.errors import InputError

__all__ = ["ExportLesion", "WriterInfo", "segment_label", "source_frames", "sul_concepts",
           "build_segmentation", "build_measurement_report", "lesion_measurements", "dciodvfy_errors",
           "SUVBW", "SUVBW_UNIT"]

#: (126401, DCM, "SUVbw"): the quantity of SUVmax/mean/peak.
SUVBW = hd.sr.CodedConcept("126401", "DCM", "SUVbw")
#: CID 85 unit of SUVbw.
SUVBW_UNIT = hd.sr.CodedConcept.from_code(codes.UCUM.StandardizedUptakeValueBodyWeight)
_ML = hd.sr.CodedConcept("ml", "UCUM", "milliliter")
_GRAM = hd.sr.CodedConcept("g", "UCUM", "gram")
_SUL = {  # study attr suv.lbm_formula -> (quantity, CID 85 unit); both formulas docs/methods.md "SUL"
    "janmahasatian": (hd.sr.CodedConcept("126405", "DCM", "SUVlbm(Janma)"),
                      hd.sr.CodedConcept.from_code(codes.UCUM.StandardizedUptakeValueLeanBodyMassJanma)),
    "james": (hd.sr.CodedConcept("126406", "DCM", "SUVlbm(James128)"),
              hd.sr.CodedConcept.from_code(codes.UCUM.StandardizedUptakeValueLeanBodyMassJames128Multiplier)),
}
_MAX_LO = 64              # SegmentLabel / TrackingID are LO (PS3.5 6.2)
_DEVICE_UID = generate_uid(entropy_srcs=["petcohort", "device observer"])  # stable: one software device


@dataclass(frozen=True)
class ExportLesion:
    """One lesion to export.

    Attributes
    ----------
    lesion : int
        Its id in the label map (the ``lesion`` of the quantify row).
    label : str
        Segment label (see :func:`segment_label`).
    values : mapping
        The ``quantify`` lesion row (``suvmax``, ``suvmean``, ``suvpeak``,
        ``sulpeak``, ``mtv_ml``, ``tlg``; None = not available).
    tracking_id, tracking_uid : str or None
        Longitudinal identity (same on every timepoint of the lesion); both or neither.
    """

    lesion: int
    label: str
    values: Mapping[str, Any]
    tracking_id: str | None = None
    tracking_uid: str | None = None


@dataclass(frozen=True)
class WriterInfo:
    """Who made the objects and how.

    Attributes
    ----------
    source : str
        Segmentation source name (``manual``, ``nnunet_bl``, ...).
    automatic : bool
        AUTOMATIC (with algorithm identification) or MANUAL segments (PS3.3 C.8.20.2).
    series_number : int
        SEG series number; the SR takes ``series_number + 1``.
    version : str
        petcohort version (SoftwareVersions, algorithm version).
    """

    source: str
    automatic: bool
    series_number: int = 9001
    version: str = field(default_factory=lambda: str(__version__))

    @property
    def algorithm_name(self) -> str:
        return f"petcohort {self.source}"[:_MAX_LO]

    def equipment(self) -> dict[str, Any]:
        return {"manufacturer": "petcohort", "manufacturer_model_name": "petcohort",
                "software_versions": self.version, "device_serial_number": "0"}


def segment_label(lesion: int, *, source_label: str | None = None, tracking_id: str | None = None) -> str:
    """``Lesion <id>``, or the ingested segment/ROI label, plus `` <tracking id>`` when tracked (<= 64 chars)."""
    base = (source_label or "").strip() or f"Lesion {int(lesion)}"
    suffix = f" {tracking_id}" if tracking_id else ""
    return base[: _MAX_LO - len(suffix)] + suffix


def source_frames(labels: np.ndarray, flips: tuple[bool, bool]) -> np.ndarray:
    """Array-order ``(Z, Y, X)`` labels in the source images' row/column order.

    ``flips`` = (flip_y, flip_x) from :func:`petcohort.storage.dicom_read.slice_geometry`:
    reversing an axis is its own inverse, so the ingest flips are applied again.
    """
    if labels.ndim != 3:
        raise InputError("NOT_3D", f"labels must be (Z, Y, X), got shape {labels.shape}")
    flip_y, flip_x = flips
    out = labels
    if flip_y:
        out = out[:, ::-1, :]
    if flip_x:
        out = out[:, :, ::-1]
    return np.ascontiguousarray(out)


def sul_concepts(lbm_formula: str | None) -> tuple[hd.sr.CodedConcept, hd.sr.CodedConcept]:
    """(quantity, unit) of SUL for the study's LBM formula (default Janmahasatian, docs/methods.md)."""
    key = (lbm_formula or "janmahasatian").lower()
    if key not in _SUL:
        raise InputError("BAD_VALUE", f"lbm_formula {lbm_formula!r} has no DICOM code; "
                         f"expected one of {sorted(_SUL)}")
    return _SUL[key]


def _check_lesions(labels: np.ndarray, lesions: Sequence[ExportLesion], n_frames: int) -> None:
    if labels.shape[0] != n_frames:
        raise InputError("EXPORT_GEOMETRY_MISMATCH", f"label map has {labels.shape[0]} slices, the source "
                         f"series {n_frames}")
    ids = [les.lesion for les in lesions]
    if len(set(ids)) != len(ids) or any(i <= 0 for i in ids):
        raise InputError("EXPORT_BAD_LESIONS", "lesion ids must be distinct positive label values")
    for les in lesions:
        if (les.tracking_id is None) != (les.tracking_uid is None):
            raise InputError("EXPORT_BAD_LESIONS", f"lesion {les.lesion}: tracking id and UID go together")


def _segment_map(labels: np.ndarray, lesions: Sequence[ExportLesion]) -> np.ndarray:
    """Label ids -> segment numbers 1..N (in ``lesions`` order); other labels -> 0."""
    top = max(int(labels.max(initial=0)), max(les.lesion for les in lesions))
    lut = np.zeros(top + 1, dtype=np.uint16 if len(lesions) > 255 else np.uint8)
    for number, les in enumerate(lesions, start=1):
        lut[les.lesion] = number
    return lut[np.clip(labels, 0, top)]


def _algorithm(info: WriterInfo) -> hd.AlgorithmIdentificationSequence | None:
    if not info.automatic:
        return None  # MANUAL segments carry no algorithm identification (PS3.3 C.8.20.2, Segment Algorithm Type)
    # CID 7162 has no "thresholding"; intensity thresholds are closest to histogram analysis
    family = (codes.cid7162.HistogramAnalysis if "threshold" in info.source
              else codes.cid7162.ArtificialIntelligence)
    return hd.AlgorithmIdentificationSequence(name=info.algorithm_name, family=family, version=info.version,
                                              source="petcohort")


def build_segmentation(pet_headers: Sequence[Dataset], labels: np.ndarray, lesions: Sequence[ExportLesion], *,
                       flips: tuple[bool, bool], info: WriterInfo) -> hd.seg.Segmentation:
    """A BINARY DICOM SEG with one segment per lesion, on the source PET images.

    Parameters
    ----------
    pet_headers : sequence of Dataset
        The PET slice headers in array order (index z); pixels are not needed.
    labels : (Z, Y, X) ndarray of int
        Lesion label map in array order (ids = ``ExportLesion.lesion``).
    lesions : sequence of ExportLesion
        Non-empty; segment ``k`` (1-based) is ``lesions[k - 1]``.
    flips : (bool, bool)
        Row/column flips of the ingest (``slice_geometry``).
    info : WriterInfo

    Raises
    ------
    InputError
        ``EXPORT_NO_LESIONS`` (a SEG needs a segment), ``EXPORT_GEOMETRY_MISMATCH``,
        ``EXPORT_BAD_LESIONS``, ``EXPORT_EMPTY_SEGMENT``.
    """
    if not lesions:
        raise InputError("EXPORT_NO_LESIONS", "a DICOM SEG needs at least one segment; the mask is empty")
    _check_lesions(labels, lesions, len(pet_headers))
    segments = _segment_map(source_frames(labels, flips), lesions)
    present = np.bincount(segments.ravel(), minlength=len(lesions) + 1)[1:]
    if not np.all(present):
        missing = [les.lesion for les, n in zip(lesions, present) if n == 0]
        raise InputError("EXPORT_EMPTY_SEGMENT", f"lesion id(s) {missing[:10]} have no voxel in the label map")
    algorithm = _algorithm(info)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=les.label,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type="AUTOMATIC" if info.automatic else "MANUAL", algorithm_identification=algorithm,
            tracking_uid=les.tracking_uid, tracking_id=les.tracking_id)
        for number, les in enumerate(lesions, start=1)]
    seg = hd.seg.Segmentation(
        source_images=list(pet_headers), pixel_array=segments, segmentation_type="BINARY",
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=info.series_number,
        sop_instance_uid=hd.UID(), instance_number=1, content_label="LESIONS",
        content_description=f"petcohort lesions ({info.source})"[:_MAX_LO],
        series_description=f"petcohort {info.source} lesions"[:_MAX_LO], **info.equipment())
    return _complete_patient_module(seg)


def _complete_patient_module(ds: Dataset) -> Dataset:
    """Fill De-identification Method when a de-identified source left it out.

    PS3.3 C.7.1.1: with Patient Identity Removed = YES, De-identification
    Method (0012,0063) or its code sequence (0012,0064) is Type 1C. highdicom
    copies the source's patient module as it is, so a source that states YES
    without a method (seen in public collections) would make our object
    non-conformant; we say what we know instead of inventing a method.
    """
    if str(ds.get("PatientIdentityRemoved", "")).upper() == "YES" and \
            not ds.get("DeidentificationMethod") and not ds.get("DeidentificationMethodCodeSequence"):
        ds.DeidentificationMethod = "source images state identity removed; method not recorded"
    return ds


def _measurement(name: hd.sr.CodedConcept | Any, value: Any, unit: hd.sr.CodedConcept, algorithm,
                 **kw: Any) -> list[hd.sr.Measurement]:
    if value is None:
        return []  # a missing value (e.g. SULpeak without SUL) is left out, never written as NaN or 0
    return [hd.sr.Measurement(name=name, value=float(value), unit=unit, algorithm_id=algorithm, **kw)]


def _suv_measurements(values: Mapping[str, Any], sul: tuple[hd.sr.CodedConcept, hd.sr.CodedConcept],
                      algorithm, *, keys: Mapping[str, str]) -> list[hd.sr.Measurement]:
    out: list[hd.sr.Measurement] = []
    for derivation, key in ((codes.SCT.Maximum, keys.get("max")), (codes.SCT.Mean, keys.get("mean")),
                            (codes.DCM.PeakValueWithinROI, keys.get("peak"))):
        if key is not None:
            out += _measurement(SUVBW, values.get(key), SUVBW_UNIT, algorithm, derivation=derivation)
    out += _measurement(sul[0], values.get("sulpeak"), sul[1], algorithm, derivation=codes.DCM.PeakValueWithinROI)
    return out


def lesion_measurements(values: Mapping[str, Any], sul: tuple[hd.sr.CodedConcept, hd.sr.CodedConcept],
                        algorithm: hd.sr.AlgorithmIdentification) -> list[hd.sr.Measurement]:
    """TID 300 measurements of one lesion from its quantify row (module docstring for the codes)."""
    out = _suv_measurements(values, sul, algorithm, keys={"max": "suvmax", "mean": "suvmean", "peak": "suvpeak"})
    out += _measurement(codes.SCT.Volume, values.get("mtv_ml"), _ML, algorithm,
                        method=codes.DCM.SumOfSegmentedVoxelMethodForVolume)
    out += _measurement(codes.DCM.MetabolicVolume, values.get("mtv_ml"), _ML, algorithm)
    out += _measurement(codes.DCM.TotalLesionGlycolysis, values.get("tlg"), _GRAM, algorithm)
    return out


def _study_group(study_values: Mapping[str, Any], sul, algorithm,
                 time_point: hd.sr.TimePointContext | None) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 group of the whole-body totals (MTV and TLG are 0 for a study without lesions)."""
    measurements = _suv_measurements(study_values, sul, algorithm, keys={"max": "suvmax"})
    measurements += _measurement(codes.DCM.MetabolicVolume, study_values.get("mtv_ml", 0.0), _ML, algorithm)
    measurements += _measurement(codes.DCM.TotalLesionGlycolysis, study_values.get("tlg", 0.0), _GRAM, algorithm)
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="Whole-body lesion burden"),
        time_point_context=time_point, measurements=measurements)


def _lesion_group(seg: hd.seg.Segmentation, number: int, les: ExportLesion, sul, algorithm,
                  time_point) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=les.tracking_uid or hd.UID(), identifier=les.label),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=number,
            source_series=hd.sr.SourceSeriesForSegmentation(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)),
        finding_type=codes.SCT.Lesion, finding_category=codes.SCT.MorphologicallyAbnormalStructure,
        time_point_context=time_point, measurements=lesion_measurements(les.values, sul, algorithm))


def build_measurement_report(pet_headers: Sequence[Dataset], lesions: Sequence[ExportLesion], *,
                             segmentation: hd.seg.Segmentation | None, study_values: Mapping[str, Any],
                             info: WriterInfo, lbm_formula: str | None = None,
                             timepoint: int | None = None, with_ct: bool = True) -> hd.sr.Comprehensive3DSR:
    """A Comprehensive 3D SR with a TID 1500 Measurement Report of the lesions.

    Parameters
    ----------
    pet_headers : sequence of Dataset
        The PET slice headers (evidence; patient/study identity of the report).
    lesions : sequence of ExportLesion
        In segment order of ``segmentation`` (lesion ``k`` = segment ``k + 1``).
    segmentation : highdicom Segmentation or None
        The SEG the lesion groups reference; None only when ``lesions`` is empty.
    study_values : mapping
        The quantify study row (``mtv_ml``, ``tlg``, ``suvmax``, ``sulpeak``).
    info : WriterInfo
    lbm_formula : str, optional
        The study's LBM formula (the SUL code); default Janmahasatian.
    timepoint : int, optional
        The study's timepoint (0 = baseline): a TID 1502 time point ``T<n>``,
        so viewers can line up the reports of one patient.
    with_ct : bool
        Procedure reported: PET/CT FDG whole body (443271005, SCT) or PET whole body (44139-4, LN) (CID 100).

    Raises
    ------
    InputError
        ``EXPORT_BAD_LESIONS`` when lesions and SEG disagree.
    """
    if lesions and (segmentation is None or len(segmentation.SegmentSequence) != len(lesions)):
        raise InputError("EXPORT_BAD_LESIONS", "the SR needs the SEG of its lesions, one segment per lesion")
    sul = sul_concepts(lbm_formula)
    algorithm = hd.sr.AlgorithmIdentification(name="petcohort", version=info.version)
    # Time Point only: its optional Time Point Order is a NUM item that readers list among the measurements
    tp = None if timepoint is None else hd.sr.TimePointContext(time_point=f"T{int(timepoint)}")
    groups: list[Any] = [_lesion_group(segmentation, k, les, sul, algorithm, tp)
                         for k, les in enumerate(lesions, start=1)]
    groups.append(_study_group(study_values, sul, algorithm, tp))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=_DEVICE_UID, name="petcohort", manufacturer_name="petcohort", model_name=info.version))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.PETCTFDGImagingOfWholeBody if with_ct else codes.LN.PETWholeBody,
        imaging_measurements=groups, title=codes.DCM.ImagingMeasurementReport)
    evidence = ([segmentation] if segmentation is not None else []) + list(pet_headers)
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence, content=report, series_instance_uid=hd.UID(), series_number=info.series_number + 1,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="petcohort", is_complete=True,
        series_description=f"petcohort {info.source} measurements"[:_MAX_LO])
    return _complete_patient_module(sr)


def dciodvfy_errors(path: str | os.PathLike, *, timeout_s: float = 120.0) -> list[str] | None:
    """The ``Error`` lines ``dciodvfy`` (dicom3tools) reports for a file; None when dciodvfy is not installed.

    Warnings are not returned: dciodvfy warns about legitimate choices (e.g.
    optional attributes left out), and only errors make a file non-conformant.
    """
    tool = shutil.which("dciodvfy")
    if tool is None:
        return None
    done = subprocess.run([tool, os.fspath(path)], capture_output=True, text=True, timeout=timeout_s, check=False)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]
