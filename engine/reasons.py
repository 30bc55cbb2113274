"""The one registry of petcohort's reason codes.

Every machine-readable ``reason`` code that petcohort raises (in a
:class:`~petcohort.engine.errors.PetCohortError`), records in a manifest, or
writes into a summary field (``<name>_reason``, ``reason``, ``qc_flags``,
export/ingest skips) is defined here once, with its category and a one-line
meaning. ``PetCohortError`` refuses a code that is not registered (a
programming error, raised as ``TypeError``), ``petcohort reasons`` prints this
table and ``docs/reasons.md`` is generated from it
(``tests/engine/test_reasons.py`` checks both directions against the source
tree).

A code's ``kind`` is ``"type"`` when it reports a value of the wrong *type*
(text where a number is expected, a list where a mapping is expected): such
errors are raised as a ``TypeError`` subclass as well as the usual
``ValueError``-rooted class (see :mod:`petcohort.engine.errors`).

This module is plain data and imports nothing heavy: ``engine.errors`` imports
it, and everything imports ``engine.errors``.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Mapping, NamedTuple

__all__ = ["Reason", "CATEGORIES", "REASONS", "RENAMED", "lookup", "require", "is_type_code", "canonical",
           "markdown_table"]

CATEGORIES: Mapping[str, str] = MappingProxyType({
    "input": "a value, array or option given to a function or command",
    "config": "a configuration file (run.yaml, cluster.yaml)",
    "dicom": "reading a DICOM series and choosing the PET/CT series",
    "nifti": "reading a NIfTI study folder",
    "suv": "SUV/SUL from the DICOM headers and the formulas",
    "mask": "DICOM SEG/RTSTRUCT masks at ingest",
    "ingest": "bringing a study into the store",
    "store": "the cohort store and the pseudonym key",
    "cluster": "starting or reaching a Dask cluster",
    "stage": "a study-stage that cannot run or did not finish",
    "segment": "segmentation models and registration",
    "measure": "why a measured value is missing (None) in a summary",
    "stats": "cohort statistics",
    "percist": "PERCIST calls and their quality flags",
    "export": "exports (DICOM SEG/SR, nnU-Net datasets)",
})


class Reason(NamedTuple):
    """One registered reason code.

    Attributes
    ----------
    code : str
        The UPPER_SNAKE code.
    category : str
        A key of :data:`CATEGORIES`.
    meaning : str
        One line: what happened (the error message adds the specifics).
    kind : {"value", "type"}
        ``"type"`` for a value of the wrong type (raised TypeError-based).
    """

    code: str
    category: str
    meaning: str
    kind: str = "value"


_T = "type"

# (code, category, meaning[, kind]); sorted by category, then code, so the table reads in groups.
_TABLE: tuple[tuple[str, ...], ...] = (
    # -- input: values and arrays passed to functions and commands --------------------------------
    ("BAD_CONNECTIVITY", "input", "a connectivity is not 6, 18 or 26"),
    ("BAD_DTYPE", "input", "an array has the wrong dtype (e.g. labels that are not integers)", _T),
    ("BAD_GEOMETRY", "input", "a spacing, origin or grid shape is not three valid (z, y, x) values (spacing > 0)"),
    ("BAD_JSON", "input", "a value to store is not JSON-serialisable (or holds NaN/inf)"),
    ("BAD_MODE", "input", "a store open mode is not 'r' or 'r+'"),
    ("BAD_PORT", "input", "a port is not an integer in 1-65535"),
    ("BAD_REGEX", "input", "a selection option (--pet-series, --ct-series, --mask-label) is not a valid regular "
                           "expression"),
    ("BAD_SCALE_FACTOR", "input", "a per-slice rescale factor is not positive and finite"),
    ("BAD_STORE_REF", "input", "a store reference is not STORE::STUDY_KEY[::NAME]"),
    ("BAD_TYPE", "input", "a value has the wrong type (e.g. text where a number is expected)", _T),
    ("BAD_VALUE", "input", "a parameter, option or configuration value is out of range or not one of the allowed "
                           "choices"),
    ("DEMO_OUT_NOT_EMPTY", "input", "the demo output folder exists and is not empty"),
    ("FILE_NOT_FOUND", "input", "a file or folder given on the command line does not exist"),
    ("GRID_MISMATCH", "input", "arrays that must share one voxel grid have different shapes"),
    ("IMAGE_NOT_FINITE", "input", "an image holds NaN or infinite voxel values"),
    ("NOT_3D", "input", "an array is not a (Z, Y, X) volume of usable size"),
    ("NOT_AN_ARRAY", "input", "a value is not a numpy/cupy array", _T),
    ("UNKNOWN_STAGE", "input", "a stage name is not a known stage"),
    # -- config -----------------------------------------------------------------------------------------
    ("CONFIG_BAD_YAML", "config", "a configuration file is not valid YAML"),
    ("CONFIG_FILE_MISSING", "config", "a configuration file does not exist"),
    ("CONFIG_UNKNOWN_FIELD", "config", "a configuration section or key is not known"),
    # -- dicom --------------------------------------------------------------------------------------------
    ("CT_SERIES_AMBIGUOUS", "dicom", "several CT series qualify for the PET; choose one with --ct-series"),
    ("CT_SERIES_NO_MATCH", "dicom", "--ct-series matches none of the study's CT series"),
    ("DICOM_BAD_PIXELS", "dicom", "a slice's pixel data cannot be decoded"),
    ("DICOM_DUPLICATE_SLICES", "dicom", "two slices of a series share one position"),
    ("DICOM_INCONSISTENT_SLICES", "dicom", "slices of a series differ in orientation, size or spacing"),
    ("DICOM_MISSING_SLICES", "dicom", "a series has gaps where slices are missing"),
    ("DICOM_MISSING_TAG", "dicom", "a tag needed to build the voxel grid is missing or malformed"),
    ("DICOM_MIXED_SERIES", "dicom", "several series were found where one was expected"),
    ("DICOM_MULTIFRAME_UNSUPPORTED", "dicom", "multi-frame (enhanced) images are not supported"),
    ("DICOM_NO_SERIES", "dicom", "no image series (no slice headers) was found"),
    ("DICOM_OBLIQUE", "dicom", "a series is oblique, non-axial or sheared"),
    ("DICOM_UNEVEN_SPACING", "dicom", "the slice spacing of a series is not uniform"),
    ("DICOM_UNREADABLE_FILE", "dicom", "files that look like DICOM could not be read (skipped)"),
    ("NO_CT_SAME_FRAME", "dicom", "no CT series shares the PET's frame of reference (PET ingested without CT)"),
    ("NO_CT_SERIES", "dicom", "the study has no CT series (PET ingested without CT)"),
    ("PET_NO_AC_SERIES", "dicom", "no PET series of the study is attenuation corrected"),
    ("PET_SERIES_AMBIGUOUS", "dicom", "several attenuation-corrected PET series qualify; choose one with --pet-series"),
    ("PET_SERIES_NO_MATCH", "dicom", "--pet-series matches none of the study's PET series"),
    # -- nifti --------------------------------------------------------------------------------------------
    ("NIFTI_BAD_LABELS", "nifti", "a NIfTI mask holds non-integer or out-of-range labels"),
    ("NIFTI_BAD_SIDECAR", "nifti", "the study's JSON sidecar is not valid JSON or not an object"),
    ("NIFTI_MISSING_FILE", "nifti", "a NIfTI study folder lacks its PET or CT file"),
    ("NIFTI_NOT_3D", "nifti", "a NIfTI file does not hold a 3-D image"),
    ("NIFTI_OBLIQUE", "nifti", "a NIfTI affine is not axis-aligned"),
    ("NIFTI_UNREADABLE", "nifti", "a file cannot be read as NIfTI"),
    # -- suv ------------------------------------------------------------------------------------------------
    ("SUL_UNAVAILABLE", "suv", "SUL is not available for the study (no SUL/SUVbw factor), so SUL values are None"),
    ("SUV_BAD_OVERRIDE", "suv", "a header override (weight, height, sex, dose, times) is unknown or invalid"),
    ("SUV_INCONSISTENT_SERIES", "suv", "a tag SUV depends on differs between images of the series"),
    ("SUV_MASS_NOT_POSITIVE", "suv", "a body-mass formula (LBM, IBW, BSA) gives <= 0 kg for this weight and height"),
    ("SUV_MISSING_ACQUISITION_TIME", "suv", "AcquisitionDate/Time is missing from an image"),
    ("SUV_MISSING_DOSE", "suv", "RadionuclideTotalDose is missing or 0"),
    ("SUV_MISSING_FRAME_DURATION", "suv", "ActualFrameDuration is missing from an image"),
    ("SUV_MISSING_HALF_LIFE", "suv", "RadionuclideHalfLife is missing or 0"),
    ("SUV_MISSING_HEIGHT", "suv", "PatientSize (height) is missing or 0"),
    ("SUV_MISSING_INJECTION_TIME", "suv", "the injection (radiopharmaceutical start) time is missing"),
    ("SUV_MISSING_REFERENCE_TIME", "suv", "no decay reference time (series/acquisition time) is available"),
    ("SUV_MISSING_SEX", "suv", "PatientSex is missing and the SUV type or SUL needs it"),
    ("SUV_MISSING_UNITS", "suv", "Units is missing"),
    ("SUV_MISSING_WEIGHT", "suv", "PatientWeight is missing or 0"),
    ("SUV_NEGATIVE_DECAY_INTERVAL", "suv", "the decay reference time precedes the injection time"),
    ("SUV_NOT_CORRECTED", "suv", "CorrectedImage lacks the attenuation/decay corrections SUV needs"),
    ("SUV_NO_IMAGES", "suv", "the PET series holds no images"),
    ("SUV_ODD_HEIGHT", "suv", "PatientSize is not in metres (> 3)"),
    ("SUV_UNKNOWN_DECAY_CORRECTION", "suv", "DecayCorrection is not START, ADMIN or NONE"),
    ("SUV_UNSUPPORTED_SEX", "suv", "the sex is not M or F where the formula (SUL, LBM) needs one of them"),
    ("SUV_UNSUPPORTED_SUV_TYPE", "suv", "SUVType is not a supported type"),
    ("SUV_UNSUPPORTED_UNITS", "suv", "Units is not BQML, CNTS, GML or CM2ML"),
    # -- mask ------------------------------------------------------------------------------------------------
    ("MASK_AMBIGUOUS", "mask", "several mask objects hold lesions for one study (e.g. two experts); none is used"),
    ("MASK_CONTOURS_IGNORED", "mask", "contours that enclose no area were ignored"),
    ("MASK_CONTOURS_OFF_GRID", "mask", "an ROI's contours all lie outside the PET grid"),
    ("MASK_CONTOURS_PARTLY_OFF_GRID", "mask", "some contours of an ROI lie outside the PET grid"),
    ("MASK_EMPTY", "mask", "every lesion segment of a mask object is empty on the PET grid"),
    ("MASK_EMPTY_SEGMENT", "mask", "one segment of a mask object is empty on the PET grid"),
    ("MASK_GRID_MISMATCH", "mask", "a SEG's frames do not lie on the PET grid"),
    ("MASK_MALFORMED", "mask", "a SEG/RTSTRUCT object is malformed"),
    ("MASK_NO_LESION_SEGMENT", "mask", "no segment or ROI of the mask object is a lesion"),
    ("MASK_NO_MATCH", "mask", "a mask object references no series of the study"),
    ("MASK_OBLIQUE", "mask", "a SEG frame or RTSTRUCT contour is not axial"),
    ("MASK_OVERLAPPING_LESIONS", "mask", "lesion segments overlap"),
    ("MASK_RESAMPLED", "mask", "a mask on another grid was resampled onto the PET grid"),
    # -- ingest ----------------------------------------------------------------------------------------------
    ("INGEST_KEY_CONFLICT", "ingest", "the study key already holds another study"),
    ("INGEST_MISSING_DATE", "ingest", "a study date is missing and the patient has several studies"),
    ("INGEST_MISSING_PATIENT_ID", "ingest", "the study has no PatientID"),
    ("INGEST_MISSING_PET", "ingest", "the study has no PET (Modality PT) series"),
    ("INGEST_TIMEPOINT_CONFLICT", "ingest", "a new study predates the patient's stored studies"),
    ("UPTAKE_TIME_UNKNOWN", "ingest", "the uptake time (injection to scan) is unknown"),
    # -- store -------------------------------------------------------------------------------------------------
    ("ARRAY_NAME_CONFLICT", "store", "an array name clashes with an existing array or group"),
    ("BAD_ARRAY", "store", "a value to store is not a numpy array of an allowed dtype", _T),
    ("BAD_IDENTIFIER", "store", "an identifier to pseudonymise is empty or not text"),
    ("BAD_KEY", "store", "a study, source or task key holds characters outside [A-Za-z0-9._-]"),
    ("BAD_LOCK_OWNER", "store", "a lock owner is empty or not text"),
    ("BAD_RECORD", "store", "a failed stage record has no valid reason code"),
    ("BAD_SECRET", "store", "a pseudonym key is too short"),
    ("MISSING_ARRAY", "store", "a study has no array of that name"),
    ("NO_EMBEDDED_KEY", "store", "the store holds no embedded pseudonym key to move out"),
    ("NO_PSEUDONYM_KEY", "store", "the store needs its pseudonym key and none is configured"),
    ("NOT_A_STORE", "store", "the path or URL is not a petcohort store"),
    ("PSEUDONYM_KEY_FILE_EXISTS", "store", "a pseudonym key file already exists where a new one would be written"),
    ("PSEUDONYM_KEY_FILE_MISSING", "store", "the pseudonym key file does not exist or is not a regular file"),
    ("PSEUDONYM_KEY_MISMATCH", "store", "the pseudonym key is not the one the store was made with"),
    ("PSEUDONYM_KEY_PERMISSIONS", "store", "the pseudonym key file is readable by others than its owner"),
    ("PSEUDONYM_KEY_SHORT", "store", "the pseudonym key is too short or not valid base64"),
    ("STORE_EXISTS", "store", "a store already exists where a new one would be created"),
    ("STORE_FORMAT_NEWER", "store", "the store was written by a newer petcohort format"),
    ("STORE_LOCKED", "store", "the store is locked by another writer"),
    ("STORE_READ_ONLY", "store", "a write was attempted on a store opened read-only"),
    ("STORE_UNREACHABLE", "store", "the store location cannot be created or reached"),
    ("STUDY_EXISTS", "store", "the study already exists in the store"),
    ("UNKNOWN_STUDY", "store", "the study is not in the store"),
    # -- cluster -----------------------------------------------------------------------------------------------
    ("CLUSTER_DEPENDENCY_MISSING", "cluster", "a package the cluster kind needs (e.g. dask-jobqueue) is not installed"),
    ("CLUSTER_JOB_BLOCKED", "cluster", "the worker batch jobs can never start or ended before any worker joined"),
    ("CLUSTER_NO_WORKERS", "cluster", "no Dask worker joined within the cluster's start timeout"),
    ("CLUSTER_SUBMIT_FAILED", "cluster", "the batch scheduler's submit command is missing or failed"),
    ("CLUSTER_UNREACHABLE", "cluster", "an existing scheduler cannot be reached"),
    ("NO_GPU", "cluster", "CUDA was asked for but no CUDA device is visible"),
    ("PORT_IN_USE", "cluster", "the dashboard port is in use or not allowed"),
    # -- stage ---------------------------------------------------------------------------------------------------
    ("GPU_OUT_OF_MEMORY", "stage", "the GPU ran out of memory; the stage was rerun on the CPU (device_fallback)"),
    ("INTERNAL_ERROR", "stage", "an unexpected exception (a bug or the environment); the message names its type"),
    ("NO_BASELINE", "stage", "a follow-up's baseline study is not in the store"),
    ("NO_BASELINE_MASK", "stage", "the baseline has no mask to propagate to the follow-up"),
    ("NO_CT", "stage", "the study has no CT and the stage needs one"),
    ("NO_MODEL", "stage", "no model folder is configured for the stage"),
    ("NO_REGISTRATION", "stage", "the follow-up has no committed registration"),
    ("STAGE_CYCLE", "stage", "stage requirements form a cycle"),
    ("UPSTREAM_FAILED", "stage", "a stage this one needs failed"),
    ("UPSTREAM_MISSING", "stage", "a stage this one needs has no record (run it first)"),
    ("WORKER_LOST", "stage", "the task's workers died too often (out of memory?)"),
    # -- segment -------------------------------------------------------------------------------------------------
    ("BAD_TRANSFORM", "segment", "a rigid transform does not have 12 + 3 parameters"),
    ("CONSTANT_IMAGE", "segment", "an input channel is constant, so it cannot be segmented"),
    ("MODEL_ARCHITECTURE_MISMATCH", "segment", "the checkpoint does not match the model's architecture"),
    ("MODEL_CHANNELS_MISMATCH", "segment", "the model's input channels differ from those expected"),
    ("MODEL_INCOMPLETE", "segment", "the model folder lacks a file the model needs"),
    ("MODEL_LABEL_MISMATCH", "segment", "the model's labels differ from those expected"),
    ("NNUNET_NOT_INSTALLED", "segment", "nnU-Net is not installed"),
    ("NO_DATASET", "segment", "no nnU-Net raw dataset folder was found"),
    ("NO_SPLITS", "segment", "the nnU-Net cross-validation splits file is missing"),
    ("PREDICTION_SHAPE", "segment", "the model returned a prediction of the wrong shape"),
    ("REGISTRATION_FAILED", "segment", "the registration could not run or did not converge"),
    ("REGISTRATION_IMPLAUSIBLE", "segment", "the registration result is outside the plausible rotation/translation"),
    ("TOTALSEG_EMPTY", "segment", "a TotalSegmentator folder holds none of the expected class files"),
    ("TOTALSEG_NOT_FOUND", "segment", "the TotalSegmentator path is neither a file nor a folder"),
    # -- measure: why a value is None --------------------------------------------------------------------------
    ("BOTH_EMPTY", "measure", "truth and prediction are both empty, so Dice is undefined"),
    ("DELTA_BASELINE_ZERO", "measure", "the baseline value is 0, so the relative change is undefined"),
    ("DELTA_MISSING", "measure", "the baseline or follow-up value is missing, so the change is undefined"),
    ("EMPTY_BONE_MASK", "measure", "the bone mask is empty, so PBI is undefined"),
    ("EMPTY_LIVER_MASK", "measure", "the liver mask is empty, so PLI is undefined"),
    ("EMPTY_MASK", "measure", "the lesion mask is empty, so the value is undefined"),
    ("INSTANCES_MISMATCH", "measure", "the lesion instance map does not match the lesion mask"),
    ("LIVER_NO_ROOM", "measure", "the liver has no room for the reference sphere (blood pool used)"),
    ("NO_AORTA_MASK", "measure", "the study has no aorta mask"),
    ("NO_BONE_MASK", "measure", "the study has no bone mask"),
    ("NO_CT_FOR_BONE_FALLBACK", "measure", "no bone mask and no CT to derive one from"),
    ("NO_LIVER_MASK", "measure", "the study has no (usable) liver mask"),
    ("NO_MANUAL_MASK", "measure", "the study has no manual lesion mask"),
    ("NO_PRED_LESIONS", "measure", "the prediction has no lesion, so precision is undefined"),
    ("NO_REFERENCE", "measure", "neither the liver nor the blood pool gives a reference region"),
    ("NO_TRUTH_IDS", "measure", "the study has no ground-truth lesion ids, so tracking is not scored"),
    ("NO_TRUTH_LESIONS", "measure", "the truth has no lesion, so recall is undefined"),
    ("NOT_ON_BASELINE", "measure", "the source has no baseline mask to track from"),
    # -- stats ----------------------------------------------------------------------------------------------------
    ("STATS_ALL_NAN", "stats", "every value is missing"),
    ("STATS_BAD_INPUT", "stats", "values are not a 1-D array of finite numbers"),
    ("STATS_BAD_LABELS", "stats", "labels are not 0/1 (or valid categories)"),
    ("STATS_CONSTANT", "stats", "a variable is constant, so the statistic is undefined"),
    ("STATS_EXACT_TIES", "stats", "the exact test needs no ties and no zero differences"),
    ("STATS_KAPPA_UNDEFINED", "stats", "every reference and call is one category, so kappa is undefined"),
    ("STATS_LENGTH_MISMATCH", "stats", "paired inputs have different lengths"),
    ("STATS_NAN", "stats", "values are missing and nan_policy is 'raise'"),
    ("STATS_NO_LABELS", "stats", "the dataset has no response labels"),
    ("STATS_SINGLE_CLASS", "stats", "labels hold one class only"),
    ("STATS_TOO_FEW", "stats", "too few usable values for the statistic"),
    ("STATS_UNKNOWN_SOURCE", "stats", "the source is not in the dataset"),
    ("STATS_UNKNOWN_VARIABLE", "stats", "the biomarker is not a variable of the dataset"),
    ("STATS_ZERO_DIFFERENCES", "stats", "every paired difference is zero"),
    ("STATS_ZERO_VARIANCE", "stats", "the variance of the AUC difference is zero, so z is undefined"),
    # -- percist --------------------------------------------------------------------------------------------------
    ("BLOOD_POOL_REFERENCE_UNSTABLE", "percist", "the blood-pool reference changed beyond tolerance (flag)"),
    ("LIVER_REFERENCE_UNSTABLE", "percist", "the liver reference changed beyond tolerance (flag)"),
    ("NO_CATEGORY", "percist", "the PERCIST call holds no category and no reason"),
    ("NO_PERCIST_RECORD", "percist", "the follow-up has no committed percist record (a missing call)"),
    ("PERCIST_BASELINE_NOT_MEASURABLE", "percist", "no baseline lesion is measurable, so no PERCIST call"),
    ("REFERENCE_SOURCE_DIFFERS", "percist", "baseline and follow-up use different reference regions (flag)"),
    ("SOURCE_NOT_CALLED", "percist", "the percist record holds no call for this source"),
    ("UPTAKE_TIME_DIFFERS", "percist", "the uptake times differ beyond tolerance (flag)"),
    # -- export ---------------------------------------------------------------------------------------------------
    ("EXPORT_BAD_LESIONS", "export", "lesion ids are not distinct positive labels"),
    ("EXPORT_BAD_SOURCE", "export", "a source name is not a store source name"),
    ("EXPORT_EMPTY_SEGMENT", "export", "a lesion id has no voxel in the label map"),
    ("EXPORT_EXISTS", "export", "the export target already exists"),
    ("EXPORT_GEOMETRY_MISMATCH", "export", "the stored grid differs from the source series' grid"),
    ("EXPORT_LABELS_MISMATCH", "export", "the label map does not match the quantify record"),
    ("EXPORT_NO_LESIONS", "export", "the mask is empty; a DICOM SEG needs a segment"),
    ("EXPORT_NOT_INGESTED", "export", "the study's ingest failed; nothing to export"),
    ("EXPORT_NOT_QUANTIFIED", "export", "the study has no committed quantify record"),
    ("EXPORT_SOURCE_MISSING", "export", "the source is not in the study's quantify record"),
    ("EXPORT_SOURCE_NOT_FOUND", "export", "the study's source series was not found in the archive"),
    ("NO_MANUAL_BASELINE_MASK", "export", "the follow-up's baseline has no manual mask (nnU-Net export skip)"),
    ("TOO_FEW_PATIENTS", "export", "too few patients with manual masks for the cross-validation folds"),
)

REASONS: Mapping[str, Reason] = MappingProxyType({row[0]: Reason(*row) for row in _TABLE})

# Synonyms merged into one code: old name -> the code now used. Records written before the merge keep
# the old name; canonical() reads them. A merged name is not registered, so it can no longer be raised.
RENAMED: Mapping[str, str] = MappingProxyType({
    "BAD_OPTION": "BAD_VALUE", "BAD_PARAMETER": "BAD_VALUE", "CLUSTER_BAD_VALUE": "BAD_VALUE",
    "CLUSTER_UNKNOWN_KIND": "BAD_VALUE", "CONFIG_BAD_VALUE": "BAD_VALUE", "EXPORT_BAD_LBM_FORMULA": "BAD_VALUE",
    "GRID_BAD_OPTION": "BAD_VALUE", "QC_BAD_WINDOW": "BAD_VALUE", "STATS_BAD_LEVEL": "BAD_VALUE",
    "STATS_BAD_METHOD": "BAD_VALUE", "STATS_BAD_POLICY": "BAD_VALUE", "SUV_BAD_OPTION": "BAD_VALUE",
    "SUV_BAD_VALUE": "BAD_VALUE", "SYNTH_BAD_PARAMETER": "BAD_VALUE",
    "BAD_ORIGIN": "BAD_GEOMETRY", "BAD_SPACING": "BAD_GEOMETRY", "GRID_BAD_GEOMETRY": "BAD_GEOMETRY",
    "NON_FINITE": "IMAGE_NOT_FINITE", "QC_NONFINITE_PET": "IMAGE_NOT_FINITE",
    "BAD_SHAPE": "NOT_3D", "BAD_VOLUME": "NOT_3D", "QC_BAD_VOLUME": "NOT_3D",
    "QC_GRID_MISMATCH": "GRID_MISMATCH",
    "CLUSTER_BAD_YAML": "CONFIG_BAD_YAML", "CLUSTER_FILE_MISSING": "CONFIG_FILE_MISSING",
    "CLUSTER_UNKNOWN_FIELD": "CONFIG_UNKNOWN_FIELD",
    "EXPORT_NO_SOURCE": "FILE_NOT_FOUND", "INGEST_NO_SOURCE": "FILE_NOT_FOUND",
    "MASK_BAD_LABEL_REGEX": "BAD_REGEX",
    "NOT_NIFTI": "NIFTI_UNREADABLE",
    "LIVER_MISSING": "NO_LIVER_MASK",
    "SUL_SEX_UNKNOWN": "SUV_MISSING_SEX",
    "SUL_UNSUPPORTED_SEX": "SUV_UNSUPPORTED_SEX",
    "UPTAKE_UNKNOWN": "UPTAKE_TIME_UNKNOWN",
    "BASELINE_MISSING": "NO_BASELINE",
    "DEVICE_UNAVAILABLE": "NO_GPU",
    "EXPORT_FAILED": "INTERNAL_ERROR", "INGEST_UNEXPECTED_ERROR": "INTERNAL_ERROR",
})


def lookup(code: str) -> Reason | None:
    """The registered :class:`Reason` of ``code``, or None when it is not registered."""
    return REASONS.get(code) if isinstance(code, str) else None


def require(code: str) -> Reason:
    """The registered :class:`Reason` of ``code``.

    Raises
    ------
    TypeError
        When ``code`` is not registered: raising an unregistered code is a
        programming error (register it here with a one-line meaning). A merged
        synonym is named with the code that replaced it.
    """
    found = lookup(code)
    if found is None:
        hint = f" (merged into {RENAMED[code]!r})" if isinstance(code, str) and code in RENAMED else ""
        raise TypeError(f"reason code {code!r} is not registered in petcohort.engine.reasons{hint}")
    return found


def is_type_code(code: str) -> bool:
    """True when ``code`` reports a value of the wrong type (raised TypeError-based)."""
    found = lookup(code)
    return found is not None and found.kind == _T


def canonical(code: str) -> str:
    """The current name of ``code`` (a merged synonym maps to the code that replaced it)."""
    return RENAMED.get(code, code)


def markdown_table() -> str:
    """The registry as the Markdown document ``docs/reasons.md`` (code | category | kind | meaning)."""
    lines = ["# Reason codes", "",
             "Every reason code petcohort raises or records, with its meaning. Generated from",
             "`engine/reasons.py` (`petcohort reasons` prints the same table); codes of kind *type*",
             "are raised as `TypeError` subclasses, all others as `ValueError` subclasses.", "",
             "| code | category | kind | meaning |", "|---|---|---|---|"]
    lines += [f"| `{r.code}` | {r.category} | {r.kind} | {r.meaning} |" for r in REASONS.values()]
    lines += ["", "## Merged codes", "",
              "Records written by earlier versions may hold these names; they mean the code on the right.", "",
              "| old code | code now |", "|---|---|"]
    lines += [f"| `{old}` | `{new}` |" for old, new in sorted(RENAMED.items())]
    return "\n".join(lines) + "\n"
