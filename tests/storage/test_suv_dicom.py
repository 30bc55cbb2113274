"""SUV from DICOM headers (storage/suv_header.py): every docs/methods.md branch, on files
written by pydicom, with the expected factor computed by hand in the test."""
import datetime as dt
import math

import numpy as np
import pydicom
import pytest
from pydicom.uid import ImplicitVRLittleEndian

from petcohort.engine.errors import SuvError
from petcohort.storage.dicom_write import write_pet_series
from petcohort.storage.dicom_time import parse_datetime
from petcohort.storage.suv_header import suv_from_datasets
from petcohort.storage.suv_times import header_number

HL = 6586.2
LAM = math.log(2) / HL
T0 = dt.datetime(2024, 3, 1, 10, 0, 0)          # scan start
INJ = dt.datetime(2024, 3, 1, 9, 0, 0)          # injection, 3600 s before
W, H, DOSE = 70.0, 1.65, 3.5e8
BASE = W * 1000 / (DOSE * math.exp(-LAM * 3600.0))   # SUVbw per Bq/mL, reference = scan start


def _write(tmp_path, name="pt", *, nz=2, patient=None, scan=None, **kw):
    folder = tmp_path / name
    pat = {"id": "ID-1", "weight_kg": W, "height_m": H, "sex": "F", **(patient or {})}
    sc = {"acquisition_datetime": T0, "injection_datetime": INJ, "dose_bq": DOSE, "half_life_s": HL,
          "frame_duration_s": 120.0, **(scan or {})}
    suv = np.linspace(0.0, 8.0, nz * 12, dtype=np.float32).reshape(nz, 3, 4)
    write_pet_series(folder, suv, spacing=(2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0), patient=pat, scan=sc, **kw)
    return folder


def _headers(folder):
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]


def _report(folder, **kw):
    return suv_from_datasets(_headers(folder), **kw)


def _mutate(folder, fn):
    for p in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(p)
        fn(ds)
        ds.save_as(p)


# ---------------------------------------------------------------- BQML, START: reference-time rules
def test_bqml_start_series_time(tmp_path):
    r = _report(_write(tmp_path))
    assert r["reason"] is None and r["units"] == "BQML" and r["decay_correction"] == "START"
    assert r["reference_rule"] == "series_time" and r["reference_time"] == "2024-03-01T10:00:00"
    assert r["suv_bw_factor"] == pytest.approx(BASE, rel=1e-12)
    assert r["suv_bw_factors"] is None
    assert r["dose_bq"] == DOSE and r["dose_unit_converted"] is False and r["half_life_s"] == HL
    assert r["injection_time"] == "2024-03-01T09:00:00" and r["injection_time_source"] == "start_datetime"


def test_post_processed_series_uses_earliest_acquisition(tmp_path):
    folder = _write(tmp_path, slice_offsets_s=[300.0, 0.0], series_datetime=T0 + dt.timedelta(hours=1, minutes=30))
    r = _report(folder)
    assert r["reference_rule"] == "earliest_acquisition" and r["reference_time"] == "2024-03-01T10:00:00"
    assert r["suv_bw_factor"] == pytest.approx(BASE, rel=1e-12)


def test_ge_private_scan_datetime(tmp_path):
    folder = _write(tmp_path, series_datetime=T0 + dt.timedelta(hours=2),
                    ge_private_datetime=dt.datetime(2024, 3, 1, 9, 58, 0))
    r = _report(folder)
    assert r["reference_rule"] == "ge_private"
    assert r["suv_bw_factor"] == pytest.approx(W * 1000 / (DOSE * math.exp(-LAM * 3480.0)), rel=1e-12)


def _backcomputed_interval():
    x = LAM * 120.0
    t_ave = math.log(x / (1 - math.exp(-x))) / LAM          # ~59.8 s into the 120 s frame
    return 3600.0 + t_ave - 45.0                             # FrameReferenceTime 45000 ms


def test_frame_backcompute(tmp_path):
    folder = _write(tmp_path, series_datetime=T0 + dt.timedelta(hours=2), frame_reference_time_ms=45000.0)
    r = _report(folder)
    assert r["reference_rule"] == "frame_backcompute"
    assert r["suv_bw_factor"] == pytest.approx(W * 1000 / (DOSE * math.exp(-LAM * _backcomputed_interval())), rel=1e-10)


def test_always_backcompute_takes_rule_3_first(tmp_path):
    folder = _write(tmp_path, frame_reference_time_ms=45000.0)   # series time is valid here
    assert _report(folder)["reference_rule"] == "series_time"
    r = _report(folder, always_backcompute=True)
    assert r["reference_rule"] == "frame_backcompute"
    assert r["suv_bw_factor"] == pytest.approx(W * 1000 / (DOSE * math.exp(-LAM * _backcomputed_interval())), rel=1e-10)


# ---------------------------------------------------------------- injection time, dose unit, midnight
def test_midnight_crossing_with_datetimes(tmp_path):
    scan = {"acquisition_datetime": dt.datetime(2024, 3, 2, 0, 20),
            "injection_datetime": dt.datetime(2024, 3, 1, 23, 5)}
    r = _report(_write(tmp_path, scan=scan))
    assert r["suv_bw_factor"] == pytest.approx(W * 1000 / (DOSE * math.exp(-LAM * 4500.0)), rel=1e-12)


def test_start_time_without_date_rolls_back_a_day(tmp_path):
    scan = {"acquisition_datetime": dt.datetime(2024, 3, 2, 0, 20),
            "injection_datetime": dt.datetime(2024, 3, 1, 23, 5)}
    r = _report(_write(tmp_path, scan=scan, injection_time_only=True))
    assert r["injection_time_source"] == "start_time_previous_day" and r["injection_time"] == "2024-03-01T23:05:00"
    assert r["suv_bw_factor"] == pytest.approx(W * 1000 / (DOSE * math.exp(-LAM * 4500.0)), rel=1e-12)


def test_start_time_without_date_same_day(tmp_path):
    r = _report(_write(tmp_path, injection_time_only=True))
    assert r["injection_time_source"] == "start_time_on_series_date"
    assert r["suv_bw_factor"] == pytest.approx(BASE, rel=1e-12)


def test_dose_in_mbq_is_converted_and_recorded(tmp_path):
    folder = _write(tmp_path, dose_in_mbq=True)
    assert float(_headers(folder)[0].RadiopharmaceuticalInformationSequence[0].RadionuclideTotalDose) == 350.0
    r = _report(folder)
    assert r["dose_unit_converted"] is True and r["dose_bq"] == pytest.approx(3.5e8)
    assert r["suv_bw_factor"] == pytest.approx(BASE, rel=1e-12)


# ---------------------------------------------------------------- ADMIN, NONE
def test_admin_has_no_decay_factor(tmp_path):
    r = _report(_write(tmp_path, decay_correction="ADMIN"))
    assert r["decay_correction"] == "ADMIN" and r["suv_bw_factor"] == pytest.approx(70_000.0 / 3.5e8, rel=1e-12)
    assert r["reference_rule"] is None


def test_none_gives_per_image_factors(tmp_path):
    folder = _write(tmp_path, decay_correction="NONE", slice_offsets_s=[0.0, 600.0],
                    corrected_image=("ATTN", "SCAT"))        # DECY not needed for NONE
    r = _report(folder)
    assert r["reason"] is None and r["suv_bw_factor"] is None
    x = LAM * 120.0
    frame = x / (1 - math.exp(-x))
    uids = [str(ds.SOPInstanceUID) for ds in _headers(folder)]
    assert r["suv_bw_factors"][uids[0]] == pytest.approx(W * 1000 / DOSE * math.exp(LAM * 3600.0) * frame, rel=1e-12)
    assert r["suv_bw_factors"][uids[1]] == pytest.approx(W * 1000 / DOSE * math.exp(LAM * 4200.0) * frame, rel=1e-12)
    assert r["suv_lbm_factor"] is None and set(r["suv_lbm_factors"]) == set(uids)


# ---------------------------------------------------------------- CNTS (Philips), GML, CM2ML
def test_cnts_philips_suv_scale_factor(tmp_path):
    folder = _write(tmp_path, units="CNTS", cnts_scale="philips_suv", philips_acsf=0.25)
    r = _report(folder)
    assert r["units"] == "CNTS" and r["vendor_scale"] == "philips_suv_scale_factor"
    stored = float(_headers(folder)[0][0x7053, 0x1000].value)
    assert r["suv_bw_factor"] == stored
    assert stored == pytest.approx(0.25 * BASE, rel=1e-9)       # DS keeps ~11 significant digits


def test_cnts_philips_activity_concentration_scale_factor(tmp_path):
    r = _report(_write(tmp_path, units="CNTS", cnts_scale="philips_acsf", philips_acsf=0.25))
    assert r["vendor_scale"] == "philips_activity_concentration_scale_factor"
    assert r["suv_bw_factor"] == pytest.approx(0.25 * BASE, rel=1e-12)


def test_cnts_without_philips_tags_refused(tmp_path):
    folder = _write(tmp_path, units="CNTS", cnts_scale="philips_acsf")
    _mutate(folder, lambda ds: ds.__delitem__((0x7053, 0x1009)))
    assert _report(folder)["reason"] == "SUV_UNSUPPORTED_UNITS"


def test_philips_private_group_on_bqml_is_ignored(tmp_path):
    folder = _write(tmp_path, philips_private_on_bqml=True)
    assert float(_headers(folder)[0][0x7053, 0x1000].value) == 12345.0
    r = _report(folder)
    assert r["vendor_scale"] is None and r["suv_bw_factor"] == pytest.approx(BASE, rel=1e-12)


@pytest.mark.parametrize("suv_type", [None, "BW"])
def test_gml_bw_is_suvbw(tmp_path, suv_type):
    r = _report(_write(tmp_path, units="GML", suv_type=suv_type))
    assert r["units"] == "GML" and r["suv_type"] == "BW" and r["suv_bw_factor"] == 1.0


def test_gml_other_types_by_hand(tmp_path):
    hcm, bmi = 165.0, W / H ** 2
    cases = {
        ("LBMJANMA", "F"): W / (9270 * W / (8780 + 244 * bmi)),
        ("LBM", "M"): W / (1.10 * W - 120 * (W / hcm) ** 2),
        ("LBMJAMES128", "F"): W / (1.07 * W - 148 * (W / hcm) ** 2),
        ("IBW", "O"): W / (((48.0 + 1.06 * (hcm - 152)) + (45.5 + 0.91 * (hcm - 152))) / 2),
    }
    for i, ((suv_type, sex), expected) in enumerate(cases.items()):
        r = _report(_write(tmp_path, f"g{i}", units="GML", suv_type=suv_type, patient={"sex": sex}))
        assert r["reason"] is None, r["message"]
        assert r["suv_bw_factor"] == pytest.approx(expected, rel=1e-12), suv_type


def test_cm2ml_bsa_by_hand(tmp_path):
    r = _report(_write(tmp_path, units="CM2ML"))
    bsa = 0.007184 * 165.0 ** 0.725 * W ** 0.425
    assert r["suv_type"] == "BSA" and r["suv_bw_factor"] == pytest.approx(W * 1000 / (bsa * 1e4), rel=1e-12)


def test_suv_type_units_mismatch_refused(tmp_path):
    with pytest.raises(SuvError) as e:   # the writer refuses a series whose factor is undefined
        _write(tmp_path, "a", units="CM2ML", suv_type="IBW")
    assert e.value.reason == "SUV_UNSUPPORTED_SUV_TYPE"
    folder = _write(tmp_path, "b", units="GML", suv_type="IBW")
    _mutate(folder, lambda ds: setattr(ds, "SUVType", "BSA"))
    assert _report(folder)["reason"] == "SUV_UNSUPPORTED_SUV_TYPE"
    _mutate(folder, lambda ds: setattr(ds, "Units", "CM2ML") or setattr(ds, "SUVType", "IBW"))
    assert _report(folder)["reason"] == "SUV_UNSUPPORTED_SUV_TYPE"
    _mutate(folder, lambda ds: setattr(ds, "Units", "GML") or setattr(ds, "SUVType", "FOO"))
    assert _report(folder)["reason"] == "SUV_UNSUPPORTED_SUV_TYPE"


def test_gml_missing_sex_refused(tmp_path):
    folder = _write(tmp_path, units="GML", suv_type="IBW")
    _mutate(folder, lambda ds: setattr(ds, "PatientSex", ""))
    assert _report(folder)["reason"] == "SUV_MISSING_SEX"


# ---------------------------------------------------------------- SUL
def test_sul_janmahasatian_default_and_james_option(tmp_path):
    folder = _write(tmp_path)
    r = _report(folder)
    lbm = 9270 * W / (8780 + 244 * W / H ** 2)
    assert r["lbm_kg"] == pytest.approx(lbm) and r["sul_per_suvbw"] == pytest.approx(lbm / W)
    assert r["suv_lbm_factor"] == pytest.approx(BASE * lbm / W, rel=1e-12) and r["suv_lbm_reason"] is None
    r = _report(folder, lbm="james")
    james = 1.07 * W - 148 * (W / 165.0) ** 2
    assert r["lbm_formula"] == "james" and r["sul_per_suvbw"] == pytest.approx(james / W)


@pytest.mark.parametrize("sex, reason", [("O", "SUV_UNSUPPORTED_SEX"), ("", "SUV_MISSING_SEX")])
def test_sul_refused_suvbw_kept(tmp_path, sex, reason):
    folder = _write(tmp_path)
    _mutate(folder, lambda ds: setattr(ds, "PatientSex", sex))
    r = _report(folder)
    assert r["reason"] is None and r["suv_bw_factor"] == pytest.approx(BASE, rel=1e-12)
    assert r["suv_lbm_factor"] is None and r["sul_per_suvbw"] is None and r["suv_lbm_reason"] == reason


def test_sul_missing_or_odd_height(tmp_path):
    folder = _write(tmp_path)
    _mutate(folder, lambda ds: ds.__delattr__("PatientSize"))
    r = _report(folder)
    assert r["suv_bw_factor"] is not None and r["suv_lbm_reason"] == "SUV_MISSING_HEIGHT"
    r = _report(folder, overrides={"height_m": 1.65})
    assert r["suv_lbm_reason"] is None and r["overrides"] == {"height_m": 1.65}
    _mutate(folder, lambda ds: setattr(ds, "PatientSize", "165"))
    assert _report(folder)["suv_lbm_reason"] == "SUV_ODD_HEIGHT"


# ---------------------------------------------------------------- refusals, each reason code
@pytest.mark.parametrize("omit, reason", [
    (("PatientWeight",), "SUV_MISSING_WEIGHT"),
    (("RadionuclideTotalDose",), "SUV_MISSING_DOSE"),
    (("RadionuclideHalfLife",), "SUV_MISSING_HALF_LIFE"),
    (("RadiopharmaceuticalStartDateTime",), "SUV_MISSING_INJECTION_TIME"),
    (("RadiopharmaceuticalInformationSequence",), "SUV_MISSING_DOSE"),
    (("DecayCorrection",), "SUV_UNKNOWN_DECAY_CORRECTION"),
    (("Units",), "SUV_MISSING_UNITS"),
    (("CorrectedImage",), "SUV_NOT_CORRECTED"),
])
def test_missing_tags_give_reason_codes(tmp_path, omit, reason):
    r = _report(_write(tmp_path, omit=omit))
    assert r["reason"] == reason and r["message"]
    assert r["suv_bw_factor"] is None and r["suv_lbm_factor"] is None


@pytest.mark.parametrize("keyword, value, reason", [
    ("Units", "PROPCNTS", "SUV_UNSUPPORTED_UNITS"),
    ("DecayCorrection", "LATER", "SUV_UNKNOWN_DECAY_CORRECTION"),
    ("CorrectedImage", ["ATTN", "SCAT"], "SUV_NOT_CORRECTED"),
    ("CorrectedImage", ["DECY"], "SUV_NOT_CORRECTED"),
    ("PatientWeight", "0", "SUV_MISSING_WEIGHT"),
])
def test_odd_tags_give_reason_codes(tmp_path, keyword, value, reason):
    folder = _write(tmp_path)
    _mutate(folder, lambda ds: setattr(ds, keyword, value))
    assert _report(folder)["reason"] == reason


def test_negative_decay_interval(tmp_path):
    folder = _write(tmp_path)
    _mutate(folder, lambda ds: setattr(ds.RadiopharmaceuticalInformationSequence[0],
                                       "RadiopharmaceuticalStartDateTime", "20240301103000.000000"))
    r = _report(folder)
    assert r["reason"] == "SUV_NEGATIVE_DECAY_INTERVAL" and "before injection" in r["message"]


def test_missing_reference_time(tmp_path):
    folder = _write(tmp_path)

    def strip(ds):
        del ds.SeriesTime
        del ds.AcquisitionTime
    _mutate(folder, strip)
    assert _report(folder)["reason"] == "SUV_MISSING_REFERENCE_TIME"


def test_none_needs_frame_duration_and_acquisition_time(tmp_path):
    folder = _write(tmp_path, decay_correction="NONE")
    _mutate(folder, lambda ds: ds.__delattr__("ActualFrameDuration"))
    assert _report(folder)["reason"] == "SUV_MISSING_FRAME_DURATION"
    _mutate(folder, lambda ds: ds.__delattr__("AcquisitionTime"))
    assert _report(folder)["reason"] == "SUV_MISSING_ACQUISITION_TIME"


# ---------------------------------------------------------------- overrides
def test_overrides_replace_missing_values_and_are_recorded(tmp_path):
    folder = _write(tmp_path, omit=("PatientWeight", "RadionuclideTotalDose", "RadiopharmaceuticalStartDateTime"))
    r = _report(folder, overrides={"weight_kg": 80.0, "dose_bq": 4e8, "injection_datetime": "2024-03-01T09:30:00",
                                   "sex": "M"})
    assert r["reason"] is None
    assert r["suv_bw_factor"] == pytest.approx(80_000 / (4e8 * math.exp(-LAM * 1800.0)), rel=1e-12)
    assert r["overrides"] == {"weight_kg": 80.0, "dose_bq": 4e8, "injection_datetime": "2024-03-01T09:30:00",
                              "sex": "M"}
    assert r["injection_time_source"] == "override" and r["sex"] == "M"


@pytest.mark.parametrize("overrides", [{"weight_kg": -1}, {"sex": "X"}, {"dose_bq": 350.0},
                                       {"injection_datetime": "yesterday"}, {"colour": "red"},
                                       {"injection_datetime": "2024-03-01T09:30:00+01:00"}])
def test_bad_overrides_refused(tmp_path, overrides):
    r = _report(_write(tmp_path), overrides=overrides)
    assert r["reason"] == "SUV_BAD_OVERRIDE" and r["suv_bw_factor"] is None


@pytest.mark.parametrize("keyword, value", [("PatientWeight", "71"), ("Units", "GML"), ("DecayCorrection", "ADMIN")])
def test_inconsistent_series_refused(tmp_path, keyword, value):
    folder = _write(tmp_path)
    path = sorted(folder.glob("*.dcm"))[1]
    ds = pydicom.dcmread(path)
    setattr(ds, keyword, value)
    ds.save_as(path)
    assert _report(folder)["reason"] == "SUV_INCONSISTENT_SERIES"


@pytest.mark.parametrize("kw", [{"units": "GML"}, {"decay_correction": "ADMIN"}, {"units": "CNTS"}])
def test_times_recorded_for_uptake_even_when_the_factor_needs_none(tmp_path, kw):
    r = _report(_write(tmp_path, slice_offsets_s=[120.0, 0.0], **kw))
    assert r["reason"] is None
    assert r["scan_time"] == "2024-03-01T10:00:00" and r["injection_time"] == "2024-03-01T09:00:00"


def test_implicit_vr_files_and_raw_private_values(tmp_path):
    folder = _write(tmp_path, series_datetime=T0 + dt.timedelta(hours=2),
                    ge_private_datetime=dt.datetime(2024, 3, 1, 9, 58, 0))

    def to_implicit(ds):
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    for p in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(p)
        to_implicit(ds)
        ds.save_as(p, implicit_vr=True, little_endian=True, enforce_file_format=True)
    r = _report(folder)
    assert r["reference_rule"] == "ge_private"
    assert r["suv_bw_factor"] == pytest.approx(W * 1000 / (DOSE * math.exp(-LAM * 3480.0)), rel=1e-12)
    # private elements of an unknown creator come back as raw bytes
    assert header_number(b"0.25 ") == 0.25 and header_number(b"") is None
    assert parse_datetime(b"20240301095800.000000 ") == dt.datetime(2024, 3, 1, 9, 58)
