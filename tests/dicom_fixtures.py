"""Writers of small synthetic DICOM studies for tests: a PET series, a DICOM SEG and an RTSTRUCT.

Imported by tests that need real DICOM files (tests/ is on sys.path through its conftest).
Arrays follow docs/contracts.md: (Z, Y, X), Z towards the head, Y posterior, X to patient
left; ``spacing``/``origin`` in array-axis order (mm, LPS). UIDs are derived from the
arguments (``generate_uid`` with entropy sources), so a test writes the same files every run.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Sequence

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from petcohort.storage.dicom_masks import RTSTRUCT_SOP_CLASS
from petcohort.storage.dicom_read import slice_geometry
from petcohort.storage.dicom_write import ds_value
from petcohort.storage.dicom_write import write_pet_series as _write_pet

T0 = dt.datetime(2024, 3, 1, 10, 0, 0)
PATIENT = {"weight_kg": 72.0, "height_m": 1.74, "sex": "M"}
SCAN = {"acquisition_datetime": T0, "injection_datetime": T0 - dt.timedelta(minutes=61), "dose_bq": 3.3e8,
        "half_life_s": 6586.2, "frame_duration_s": 120.0, "manufacturer": "SIEMENS", "model": "Biograph"}
AC_CORRECTIONS = ("NORM", "DTIM", "ATTN", "SCAT", "DECY", "RAN")
ORGAN_CODES = {"liver": codes.SCT.Liver, "bone": codes.SCT.Bone, "aorta": codes.SCT.Aorta}


def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=["petcohort-tests", *(str(p) for p in parts)])


def write_pet_series(folder, volume_suv: np.ndarray, spacing: Sequence[float], origin: Sequence[float], *,
                     ac: bool = True, series_description: str = "PET WB AC", frame_uid: str | None = None,
                     study_uid: str | None = None, patient_id: str = "PCT-FIXTURE-1", flip_rows: bool = False,
                     series_uid: str | None = None) -> list[Dataset]:
    """Write an SUVbw volume as a PET series (BQML, decay corrected to START) and return its datasets.

    Pixels and SUV headers come from :func:`petcohort.storage.dicom_write.write_pet_series`
    (so petcohort's SUV code accepts them); this wrapper then gives the series its own
    UIDs, description and frame of reference, and optionally stores the rows bottom-up.

    Parameters
    ----------
    folder : path
        Created if missing; one file per slice.
    volume_suv : (Z, Y, X) ndarray of float, SUVbw
    spacing, origin : 3 floats
        (sz, sy, sx), (oz, oy, ox) in mm.
    ac : bool
        False writes a non-attenuation-corrected series (CorrectedImage without ATTN/SCAT).
    frame_uid, study_uid, series_uid : str, optional
        Defaults derived from ``patient_id`` (AC and NAC series of one patient share study and frame).
    flip_rows : bool
        Store rows from anterior to posterior reversed (ImageOrientationPatient column
        cosine (0, -1, 0)): the same volume, another storage order.

    Returns
    -------
    list of Dataset
        The files as written (with pixel data), in increasing z.
    """
    study_uid = study_uid or _uid(patient_id, "study")
    frame_uid = frame_uid or _uid(study_uid, "frame")
    series_uid = series_uid or _uid(study_uid, series_description, ac, flip_rows, "series")
    scan = {**SCAN, "study_uid": study_uid, "pt_series_uid": series_uid}
    written = _write_pet(folder, volume_suv, spacing=spacing, origin=origin, patient={"id": patient_id, **PATIENT},
                         scan=scan, corrected_image=AC_CORRECTIONS)
    rows = int(np.shape(volume_suv)[1])
    out = []
    for z, path in enumerate(written["files"]):
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _uid(series_uid, z)
        ds.FrameOfReferenceUID, ds.SeriesDescription = frame_uid, series_description
        if not ac:
            ds.CorrectedImage = [c for c in AC_CORRECTIONS if c not in ("ATTN", "SCAT")]
        if flip_rows:
            ds.ImageOrientationPatient = ["1", "0", "0", "0", "-1", "0"]
            x, y, zz = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [ds_value(x), ds_value(y + (rows - 1) * float(spacing[1])), ds_value(zz)]
            ds.PixelData = np.ascontiguousarray(ds.pixel_array[::-1]).tobytes()
        ds.save_as(path, enforce_file_format=True)
        out.append(pydicom.dcmread(path))
    return out


def _stored_orientation(mask: np.ndarray, flips: tuple[bool, bool]) -> np.ndarray:
    """A (Z, Y, X) array in the pixel order of the stored slices."""
    flip_y, flip_x = flips
    return mask[:, ::-1 if flip_y else 1, ::-1 if flip_x else 1]


def write_seg(path, pet_datasets: Sequence[Dataset], lesion_masks: list[np.ndarray], labels: Sequence[str],
              organ_masks: dict[str, np.ndarray] | None = None, fractional: bool = False, *,
              labelmap: bool = False) -> Dataset:
    """Write a DICOM SEG (highdicom) of lesion and organ masks on the PET grid.

    Parameters
    ----------
    lesion_masks : list of (Z, Y, X) ndarray
        Binary masks, or fractions in [0, 1] when ``fractional``; segments 1..n,
        coded as Neoplasm (category Morphologically abnormal structure).
    labels : SegmentLabel of each lesion mask.
    organ_masks : dict, optional
        ``liver``/``bone``/``aorta`` -> (Z, Y, X) binary mask; segments n+1..., coded by organ,
        labelled with the organ name.
    fractional, labelmap : bool
        SegmentationType FRACTIONAL (MaximumFractionalValue 255) or LABELMAP instead of BINARY.
    """
    order, _, _, flips = slice_geometry(pet_datasets)
    sources = [pet_datasets[i] for i in order]
    descriptions, arrays = [], []
    category_lesion, category_organ = codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.AnatomicalStructure
    items = [(label, category_lesion, codes.SCT.Neoplasm, m) for label, m in zip(labels, lesion_masks)]
    items += [(organ, category_organ, ORGAN_CODES[organ], m) for organ, m in (organ_masks or {}).items()]
    for number, (label, category, prop, mask) in enumerate(items, start=1):
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=label, segmented_property_category=category,
            segmented_property_type=prop, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL))
        arrays.append(_stored_orientation(np.asarray(mask), flips))
    pixels = np.stack(arrays, axis=-1)
    pixels = pixels.astype(np.float32) if fractional else pixels.astype(np.uint8)
    kind = "FRACTIONAL" if fractional else "LABELMAP" if labelmap else "BINARY"
    if labelmap:   # one label image: segment numbers as pixel values
        pixels = (pixels * np.arange(1, pixels.shape[-1] + 1, dtype=np.uint8)).max(axis=-1)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues[kind],
        segment_descriptions=descriptions, series_instance_uid=_uid(path, "seg-series"), series_number=300,
        sop_instance_uid=_uid(path, "seg"), instance_number=1, manufacturer="petcohort-tests",
        manufacturer_model_name="dicom_fixtures", software_versions="1", device_serial_number="0",
        max_fractional_value=255)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return seg


def lps_contour(rows_cols: np.ndarray, z_index: float, spacing: Sequence[float],
                origin: Sequence[float]) -> np.ndarray:
    """(N, 3) LPS mm points of a polygon given in (row, col) pixel units of slice ``z_index``."""
    rc = np.asarray(rows_cols, dtype=np.float64)
    oz, oy, ox = origin
    sz, sy, sx = spacing
    return np.stack([ox + rc[:, 1] * sx, oy + rc[:, 0] * sy, np.full(len(rc), oz + z_index * sz)], axis=1)


def write_rtstruct(path, pet_datasets: Sequence[Dataset], rois: list[tuple[str, str, list]]) -> Dataset:
    """Write an RT Structure Set (pydicom) referencing the PET series.

    Parameters
    ----------
    rois : list of (name, interpreted_type, contours)
        ROIs numbered 1..n in order. A contour is an (N, 3) array of LPS mm points
        (CLOSED_PLANAR) or a ``(geometric_type, points)`` pair (POINT, OPEN_PLANAR...).
    """
    first = pet_datasets[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _uid(path, "rtstruct")
    ds.SpecificCharacterSet = "ISO_IR 100"
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                    "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName"):
        setattr(ds, keyword, first.get(keyword, ""))
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "RTSTRUCT", _uid(path, "rt-series"), 400
    ds.Manufacturer, ds.InstanceNumber = "petcohort-tests", 1
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = first.FrameOfReferenceUID, ""   # Frame of Reference
    ds.StructureSetLabel, ds.StructureSetDate, ds.StructureSetTime = "fixture", first.StudyDate, first.StudyTime
    ds.OperatorsName = ""
    images = [Dataset() for _ in pet_datasets]
    for item, pet in zip(images, pet_datasets):
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = pet.SOPClassUID, pet.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID, series.ContourImageSequence = first.SeriesInstanceUID, DicomSequence(images)
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"    # Detached Study Management (PS3.3 C.8.8.5)
    study.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study.RTReferencedSeriesSequence = DicomSequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID, frame.RTReferencedStudySequence = first.FrameOfReferenceUID, DicomSequence([study])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([frame])
    ds.StructureSetROISequence, ds.ROIContourSequence, ds.RTROIObservationsSequence = [], [], []
    for number, (name, interpreted, contours) in enumerate(rois, start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName, roi.ROIGenerationAlgorithm = number, name, "MANUAL"
        roi.ReferencedFrameOfReferenceUID = first.FrameOfReferenceUID
        ds.StructureSetROISequence.append(roi)
        items = []
        for contour in contours:
            kind, points = contour if isinstance(contour, tuple) else ("CLOSED_PLANAR", contour)
            points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
            item = Dataset()
            item.ContourGeometricType, item.NumberOfContourPoints = kind, len(points)
            item.ContourData = [ds_value(v) for v in points.ravel()]
            items.append(item)
        roi_contour = Dataset()
        roi_contour.ReferencedROINumber, roi_contour.ROIDisplayColor = number, [255, 0, 0]
        roi_contour.ContourSequence = DicomSequence(items)
        ds.ROIContourSequence.append(roi_contour)
        observation = Dataset()
        observation.ObservationNumber, observation.ReferencedROINumber = number, number
        observation.RTROIInterpretedType, observation.ROIInterpreter = interpreted, ""
        ds.RTROIObservationsSequence.append(observation)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds
