"""storage/dicom_select.py: which PET and CT series of a study are used (METHODS series selection)."""
import datetime as dt
import math
import zlib

import numpy as np
import pydicom
import pytest

from petcohort.engine.errors import ConfigError, DicomError
from petcohort.storage.dicom_read import scan_dicom_tree
from petcohort.storage.dicom_select import compile_pattern, select_ct, select_pet
from petcohort.storage.dicom_write import write_ct_series, write_pet_series

T0 = dt.datetime(2024, 2, 20, 11, 0)
PATIENT = {"id": "MRN-1", "name": "Doe^Jane", "weight_kg": 70.0, "height_m": 1.64, "sex": "F"}
SCAN = {"acquisition_datetime": T0, "injection_datetime": T0 - dt.timedelta(minutes=60), "dose_bq": 3e8,
        "half_life_s": 6586.2, "frame_duration_s": 120.0, "study_uid": "1.2.999.1"}
NAC = ("NORM", "DTIM", "DECY", "RAN")


def _pet(root, name, *, description, corrected=("NORM", "DTIM", "ATTN", "SCAT", "DECY", "RAN"), patch=None):
    vol = np.random.default_rng(len(name)).gamma(2, 1, (3, 4, 5))
    write_pet_series(root / name, vol, spacing=(4, 4, 4), origin=(0, 0, 0), patient=PATIENT,
                     scan={**SCAN, "pt_series_uid": f"1.2.999.1.{zlib.crc32(name.encode())}"},
                     )
    patch = {**(patch or {}), "CorrectedImage": list(corrected)}   # the writer itself refuses NAC headers
    for f in sorted((root / name).iterdir()):
        ds = pydicom.dcmread(f)
        ds.SeriesDescription = description
        for k, v in patch.items():
            setattr(ds, k, v)
        ds.save_as(f)


def _ct(root, name, *, description="CT WB", image_type=None, frame=None):
    write_ct_series(root / name, np.zeros((3, 4, 5)), spacing=(4, 4, 4), origin=(0, 0, 0), patient=PATIENT,
                    scan={**SCAN, "ct_series_uid": f"1.2.999.2.{zlib.crc32(name.encode())}"})
    for f in sorted((root / name).iterdir()):
        ds = pydicom.dcmread(f)
        ds.SeriesDescription = description
        if image_type:
            ds.ImageType = image_type
        if frame:
            ds.FrameOfReferenceUID = frame
        ds.save_as(f)


def test_ac_series_chosen_over_nac(tmp_path):
    _pet(tmp_path, "ac", description="PET WB AC")
    _pet(tmp_path, "nac", description="PET WB NAC", corrected=NAC)
    choice = select_pet(scan_dicom_tree(tmp_path))
    assert choice.series.headers[0].SeriesDescription == "PET WB AC"
    assert choice.rule == "attenuation_corrected"
    flags = {c["description"]: (c["attenuation_corrected"], c["chosen"]) for c in choice.candidates}
    assert flags == {"PET WB AC": (True, True), "PET WB NAC": (False, False)}
    assert "1.2.999" not in repr(choice.provenance())          # no UID in the provenance


def test_nac_only_is_refused(tmp_path):
    _pet(tmp_path, "nac", description="PET NAC", corrected=NAC)
    with pytest.raises(DicomError) as e:
        select_pet(scan_dicom_tree(tmp_path))
    assert e.value.reason == "PET_NO_AC_SERIES" and "PET NAC" in e.value.message


def test_static_over_dynamic_and_ambiguity(tmp_path):
    _pet(tmp_path, "static", description="PET WB", patch={"SeriesType": ["WHOLE BODY", "IMAGE"]})
    _pet(tmp_path, "dyn", description="PET dynamic", patch={"SeriesType": ["DYNAMIC", "IMAGE"]})
    choice = select_pet(scan_dicom_tree(tmp_path))
    assert choice.series.headers[0].SeriesDescription == "PET WB"
    assert choice.rule == "attenuation_corrected+static_over_dynamic_or_gated"
    _pet(tmp_path, "psf", description="PET WB PSF")
    with pytest.raises(DicomError) as e:
        select_pet(scan_dicom_tree(tmp_path))
    assert e.value.reason == "PET_SERIES_AMBIGUOUS"
    assert "PET WB PSF" in e.value.message and "PET WB (" in e.value.message and "--pet-series" in e.value.message
    choice = select_pet(scan_dicom_tree(tmp_path), pet_series=compile_pattern("psf", "--pet-series"))
    assert choice.series.headers[0].SeriesDescription == "PET WB PSF" and choice.rule == "pet_series_option"
    with pytest.raises(DicomError) as e:
        select_pet(scan_dicom_tree(tmp_path), pet_series=compile_pattern("nothing", "--pet-series"))
    assert e.value.reason == "PET_SERIES_NO_MATCH"
    with pytest.raises(ConfigError) as e:
        compile_pattern("(", "--pet-series")
    assert e.value.reason == "BAD_REGEX"


def test_ct_same_frame_localizer_excluded_and_pet_only(tmp_path):
    _pet(tmp_path, "pet", description="PET AC")
    series = scan_dicom_tree(tmp_path)
    pet = select_pet(series).series
    none = select_ct(series, pet)
    assert none.series is None and none.reason == "NO_CT_SERIES"
    _ct(tmp_path, "ct", description="CT AC")
    _ct(tmp_path, "topo", description="Topogram", image_type=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    series = scan_dicom_tree(tmp_path)
    choice = select_ct(series, pet)
    assert choice.series.headers[0].SeriesDescription == "CT AC" and choice.rule == "same_frame_of_reference"
    _ct(tmp_path, "ct2", description="CT diagnostic")
    with pytest.raises(DicomError) as e:
        select_ct(scan_dicom_tree(tmp_path), pet)
    assert e.value.reason == "CT_SERIES_AMBIGUOUS"
    choice = select_ct(scan_dicom_tree(tmp_path), pet, ct_series=compile_pattern("diag", "--ct-series"))
    assert choice.series.headers[0].SeriesDescription == "CT diagnostic"


def test_ct_of_another_frame_is_not_used_when_several(tmp_path):
    _pet(tmp_path, "pet", description="PET AC")
    _ct(tmp_path, "a", description="CT a", frame="1.2.3.4")
    _ct(tmp_path, "b", description="CT b", frame="1.2.3.5")
    series = scan_dicom_tree(tmp_path)
    choice = select_ct(series, select_pet(series).series)
    assert choice.series is None and choice.reason == "NO_CT_SAME_FRAME"
    assert math.isfinite(len(choice.candidates))
