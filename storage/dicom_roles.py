"""Segment roles: which coded concept or label makes a SEG segment or RTSTRUCT ROI a lesion or an organ.

A segment is a lesion, liver, bone, aorta or other (:data:`ROLES`), by coded
concept where present (SegmentedPropertyTypeCodeSequence, PS3.3 C.8.20.2;
RTROIIdentificationCodeSequence, PS3.3 C.8.8.8), else by label, with
TotalSegmentator class names included (docs/methods.md, "DICOM masks and
series selection"). Pure tables and text rules: no IO.
"""
from __future__ import annotations

import re

from pydicom.sr.codedict import codes

from petcohort.engine.kernels.organs import TOTALSEG_V2_ORGANS

__all__ = ["ROLES", "ORGAN_ROLES", "segment_role", "roi_role"]

ROLES = ("lesion", "liver", "bone", "aorta", "other")
ORGAN_ROLES = ("liver", "bone", "aorta")


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


def _role_from_code(key: str | None, meaning: str) -> str | None:
    if key is None and not meaning:
        return None
    return _ROLE_CODES.get(key or "") or _role_from_text(meaning)


def segment_role(key: str | None, meaning: str, label: str, category: str | None) -> str:
    """Role of one SEG segment: by its SegmentedPropertyType code, else its label, else its category.

    Parameters
    ----------
    key, meaning : ``designator:value`` and CodeMeaning of the segmented property type (None, "" when absent).
    label : SegmentLabel.
    category : ``designator:value`` of the SegmentedPropertyCategory; a "morphologically abnormal structure"
        category makes an otherwise unknown segment a lesion.
    """
    return (_role_from_code(key, meaning) or _role_from_text(label)
            or ("lesion" if category in _LESION_CATEGORIES else "other"))


def roi_role(interpreted: str, key: str | None, meaning: str, label: str) -> str:
    """Role of one RTSTRUCT ROI: by RTROIInterpretedType (upper case), else its identification code, else its name."""
    if interpreted == "GTV":
        return "lesion"
    if interpreted in _RT_NOT_ANATOMY:
        return "other"
    # ORGAN, AVOIDANCE, empty or unknown: decided by code, else by name
    return _role_from_code(key, meaning) or _role_from_text(label) or "other"
