"""PET DICOM headers -> SUVbw/SUL factors with provenance (docs/methods.md "SUV from DICOM").

:func:`suv_from_datasets` applies every rule of docs/methods.md to the headers of
one PET series (pydicom datasets, pixels not needed) and returns a report
dict. Header problems never raise: the report carries ``reason`` (an
UPPER_SNAKE code) and ``message``. The formulas are in
``petcohort.engine.kernels.suv``.

Sources: QIBA SUV vendor-neutral pseudo-code; IBSI-SUV manual
(oncoray/suv_computation); DICOM PS3.3 C.8.9 (PET Image module);
cornerstonejs/calculate-suv (MIT) for the vendor private tags
(Philips (7053,1000)/(7053,1009), GE (0009,100D)).
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Any, Sequence

from pydicom.dataset import Dataset

from petcohort.engine.errors import SuvError
from petcohort.engine.kernels import suv as K
from petcohort.storage.dicom_time import parse_datetime
from petcohort.storage.suv_times import (GE_SCAN_DATETIME, REFERENCE_RULES, acquisition_datetime, header_number,
                                         injection_from_start_time, private_value, reference_time)

__all__ = ["SuvOverrides", "suv_from_datasets", "MBQ_DOSE_LIMIT", "PHILIPS_SUV_SCALE", "PHILIPS_ACSF",
           "GE_SCAN_DATETIME", "REFERENCE_RULES"]


PHILIPS_SUV_SCALE = (0x7053, 0x1000)
PHILIPS_ACSF = (0x7053, 0x1009)
#: A RadionuclideTotalDose below this value is taken to be in MBq (docs/methods.md).
MBQ_DOSE_LIMIT = 1e5


@dataclass(frozen=True)
class SuvOverrides:
    """User-supplied values replacing header values; each one is recorded in provenance."""

    weight_kg: float | None = None
    height_m: float | None = None
    sex: str | None = None
    dose_bq: float | None = None
    injection_datetime: _dt.datetime | None = None

    @classmethod
    def from_dict(cls, d: dict | None) -> "SuvOverrides":
        """Validate ``{"weight_kg", "height_m", "sex", "dose_bq", "injection_datetime" (ISO)}``."""
        d = dict(d or {})
        unknown = set(d) - {"weight_kg", "height_m", "sex", "dose_bq", "injection_datetime"}
        if unknown:
            raise SuvError("SUV_BAD_OVERRIDE", f"unknown override(s) {sorted(unknown)}; expected weight_kg, "
                           "height_m, sex, dose_bq, injection_datetime")
        for name, lo, hi in (("weight_kg", 1.0, 500.0), ("height_m", 0.3, 2.6), ("dose_bq", MBQ_DOSE_LIMIT, 1e11)):
            v = d.get(name)
            if v is not None and not (isinstance(v, (int, float)) and lo <= float(v) <= hi):
                raise SuvError("SUV_BAD_OVERRIDE", f"override {name} must be a number in [{lo:g}, {hi:g}], got {v!r}")
        sex = d.get("sex")
        if sex is not None and sex not in ("M", "F", "O"):
            raise SuvError("SUV_BAD_OVERRIDE", f"override sex must be 'M', 'F' or 'O', got {sex!r}")
        inj = d.get("injection_datetime")
        if inj is not None and not isinstance(inj, _dt.datetime):
            try:
                inj = _dt.datetime.fromisoformat(str(inj))
            except ValueError:
                raise SuvError("SUV_BAD_OVERRIDE", "override injection_datetime must be an ISO 8601 date-time "
                               f"(e.g. 2024-03-01T09:15:00), got {inj!r}") from None
        if inj is not None and inj.tzinfo is not None:
            raise SuvError("SUV_BAD_OVERRIDE", "override injection_datetime must be local scanner time without "
                           f"a UTC offset (DICOM times carry none), got {d['injection_datetime']!r}")
        return cls(weight_kg=_f(d.get("weight_kg")), height_m=_f(d.get("height_m")), sex=sex,
                   dose_bq=_f(d.get("dose_bq")), injection_datetime=inj)


def _f(v: Any) -> float | None:
    return None if v is None else float(v)


def _text(ds: Dataset, keyword: str) -> str | None:
    v = ds.get(keyword)
    if v is None:
        return None
    v = str(v).strip().upper()
    return v or None


def _iso(t: _dt.datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def _empty_report(overrides: SuvOverrides, lbm: str) -> dict:
    return {
        "suv_bw_factor": None, "suv_bw_factors": None, "suv_lbm_factor": None, "suv_lbm_factors": None,
        "sul_per_suvbw": None, "suv_lbm_reason": None, "suv_lbm_message": None, "lbm_formula": lbm,
        "units": None, "suv_type": None, "vendor_scale": None, "decay_correction": None,
        "reference_time": None, "reference_rule": None, "scan_time": None, "injection_time": None,
        "injection_time_source": None,
        "dose_bq": None, "dose_unit_converted": False, "half_life_s": None, "weight_kg": None,
        "height_m": None, "sex": None, "lbm_kg": None, "corrected_image": None,
        "overrides": {k: (_iso(v) if isinstance(v, _dt.datetime) else v)
                      for k, v in vars(overrides).items() if v is not None},
        "n_instances": 0, "reason": None, "message": None,
    }


def suv_from_datasets(datasets: Sequence[Dataset], *, overrides: dict | SuvOverrides | None = None,
                      always_backcompute: bool = False, lbm: str = "janmahasatian") -> dict:
    """SUV factors and provenance of one PET series.

    Parameters
    ----------
    datasets : sequence of pydicom Dataset
        The headers of every image of the series (pixel data not needed).
    overrides : dict or SuvOverrides, optional
        ``weight_kg``, ``height_m``, ``sex``, ``dose_bq``, ``injection_datetime`` (ISO).
    always_backcompute : bool
        Try the frame back-computation (rule 3) before the other reference-time rules.
    lbm : {"janmahasatian", "james"}
        LBM formula for SUL.

    Returns
    -------
    dict
        ``suv_bw_factor`` multiplies rescaled pixel values (RescaleSlope *
        stored + RescaleIntercept) to give SUVbw; it is None when the factor
        differs per image, then ``suv_bw_factors`` maps SOPInstanceUID to the
        factor. ``suv_lbm_factor``/``suv_lbm_factors`` likewise give SUL, and
        ``sul_per_suvbw`` = LBM / W. ``reason``/``message`` name a refusal
        (SUVbw), ``suv_lbm_reason`` a refusal of SUL alone.
    """
    try:
        ov = overrides if isinstance(overrides, SuvOverrides) else SuvOverrides.from_dict(overrides)
    except SuvError as exc:
        report = _empty_report(SuvOverrides(), lbm)
        report.update(reason=exc.reason, message=exc.message)
        return report
    report = _empty_report(ov, lbm)
    report["n_instances"] = len(datasets)
    try:
        if not datasets:
            raise SuvError("SUV_NO_IMAGES", "the PET series holds no images")
        if lbm not in ("janmahasatian", "james"):
            raise SuvError("BAD_VALUE", f"lbm must be 'janmahasatian' or 'james', got {lbm!r}")
        _body_fields(datasets[0], ov, report)
        factors = _bw_factors(list(datasets), ov, report, always_backcompute=always_backcompute)
    except SuvError as exc:
        report.update(reason=exc.reason, message=exc.message)
        _sul(report, None, lbm)
        return report
    _collapse(report, factors, "suv_bw_factor", "suv_bw_factors")
    _times_for_provenance(list(datasets), ov, report)
    _sul(report, factors, lbm)
    return report


def _collapse(report: dict, factors: dict[str, float], scalar: str, per_instance: str) -> None:
    values = set(factors.values())
    if len(values) == 1:
        report[scalar], report[per_instance] = values.pop(), None
    else:
        report[scalar], report[per_instance] = None, dict(factors)


def _body_fields(ds: Dataset, ov: SuvOverrides, report: dict) -> None:
    """Weight, height, sex from the header or the overrides (no refusal here: each use refuses)."""
    weight = ov.weight_kg if ov.weight_kg is not None else header_number(ds.get("PatientWeight"))
    height = ov.height_m if ov.height_m is not None else header_number(ds.get("PatientSize"))
    sex = ov.sex if ov.sex is not None else _text(ds, "PatientSex")
    report["weight_kg"] = weight if weight is not None and weight > 0 else None
    report["height_m"] = height if height is not None and height > 0 else None
    report["sex"] = sex


def _require_weight(report: dict) -> float:
    if report["weight_kg"] is None:
        raise SuvError("SUV_MISSING_WEIGHT", "PatientWeight (0010,1030) is missing or 0; give a weight_kg override")
    return report["weight_kg"]


def _require_height(report: dict) -> float:
    h = report["height_m"]
    if h is None:
        raise SuvError("SUV_MISSING_HEIGHT", "PatientSize (0010,1020) is missing or 0; give a height_m override")
    if h > 3.0:  # PatientSize is in metres; a value like 165 is centimetres stored by mistake
        raise SuvError("SUV_ODD_HEIGHT", f"PatientSize (0010,1020) is {h!r}, expected metres (<= 3); "
                       "give a height_m override")
    return h


def _body(report: dict) -> K.Body:
    return K.Body(weight_kg=_require_weight(report), height_m=_require_height(report), sex=report["sex"])


def _check_corrected(ds: Dataset, decay: str | None, report: dict) -> None:
    corrected = ds.get("CorrectedImage")
    values = [] if corrected is None else ([corrected] if isinstance(corrected, str) else list(corrected))
    values = [str(v).strip().upper() for v in values]
    report["corrected_image"] = values
    need = ("ATTN",) if decay == "NONE" else ("ATTN", "DECY")
    missing = [v for v in need if v not in values]
    if missing:
        raise SuvError("SUV_NOT_CORRECTED", f"CorrectedImage (0028,0051) is {values!r}; it must contain "
                       f"{' and '.join(need)} (missing {missing})")


_SERIES_LEVEL = ("Units", "CorrectedImage", "DecayCorrection", "PatientWeight", "PatientSize", "PatientSex",
                 "SeriesDate", "SeriesTime", "SUVType")


def _check_consistent(datasets: list[Dataset]) -> None:
    """Series-level values must agree on every image (else the images are not one series)."""
    def radio(ds: Dataset, keyword: str) -> Any:
        seq = ds.get("RadiopharmaceuticalInformationSequence")
        return str(seq[0].get(keyword, "")) if seq else ""

    first = datasets[0]
    for ds in datasets[1:]:
        for keyword in _SERIES_LEVEL:
            if str(ds.get(keyword, "")) != str(first.get(keyword, "")):
                raise SuvError("SUV_INCONSISTENT_SERIES", f"{keyword} differs between images of the series; "
                               "series-level values must be identical on every image")
        for keyword in ("RadionuclideTotalDose", "RadionuclideHalfLife", "RadiopharmaceuticalStartDateTime",
                        "RadiopharmaceuticalStartTime"):
            if radio(ds, keyword) != radio(first, keyword):
                raise SuvError("SUV_INCONSISTENT_SERIES", f"{keyword} differs between images of the series")


def _bw_factors(datasets: list[Dataset], ov: SuvOverrides, report: dict, *,
                always_backcompute: bool) -> dict[str, float]:
    _check_consistent(datasets)
    first = datasets[0]
    units = _text(first, "Units")
    report["units"] = units
    if units is None:
        raise SuvError("SUV_MISSING_UNITS", "Units (0054,1001) is missing; expected BQML, CNTS, GML or CM2ML")
    if units not in ("BQML", "CNTS", "GML", "CM2ML"):
        raise SuvError("SUV_UNSUPPORTED_UNITS", f"Units (0054,1001) is {units!r}; expected BQML, CNTS, GML or CM2ML")
    decay = _text(first, "DecayCorrection")
    report["decay_correction"] = decay
    _check_corrected(first, decay, report)
    uids = [str(ds.get("SOPInstanceUID", f"#{i}")) for i, ds in enumerate(datasets)]

    if units in ("GML", "CM2ML"):
        suv_type = _text(first, "SUVType") or ("BSA" if units == "CM2ML" else "BW")
        report["suv_type"] = suv_type
        if (units == "CM2ML") != (suv_type == "BSA"):
            raise SuvError("SUV_UNSUPPORTED_SUV_TYPE", f"SUVType (0054,1006) {suv_type!r} does not match Units "
                           f"{units!r} (BSA goes with CM2ML, the other types with GML)")
        if suv_type not in K.SUV_TYPES:
            raise SuvError("SUV_UNSUPPORTED_SUV_TYPE",
                           f"SUVType (0054,1006) is {suv_type!r}; expected one of {K.SUV_TYPES}")
        if suv_type == "BW":
            return dict.fromkeys(uids, 1.0)
        if report["sex"] is None and suv_type != "BSA":
            raise SuvError("SUV_MISSING_SEX", f"PatientSex (0010,0040) is missing; SUVType {suv_type} needs it")
        return dict.fromkeys(uids, K.gml_to_suvbw(suv_type, _body(report)))

    scale = 1.0
    if units == "CNTS":
        philips = [header_number(private_value(ds, PHILIPS_SUV_SCALE)) for ds in datasets]
        if all(v is not None and v > 0 for v in philips):
            report["vendor_scale"] = "philips_suv_scale_factor"
            return dict(zip(uids, philips))
        acsf = [header_number(private_value(ds, PHILIPS_ACSF)) for ds in datasets]
        if not all(v is not None and v > 0 for v in acsf):
            raise SuvError("SUV_UNSUPPORTED_UNITS", "Units CNTS without the Philips private SUV scale factor "
                           "(7053,1000) or activity concentration scale factor (7053,1009) on every image")
        report["vendor_scale"] = "philips_activity_concentration_scale_factor"
        scale = acsf  # per image: counts -> Bq/mL
    weight = _require_weight(report)
    dose, half_life, injection = _radiopharmaceutical(datasets, ov, report)
    if decay is None:
        raise SuvError("SUV_UNKNOWN_DECAY_CORRECTION",
                       "DecayCorrection (0054,1102) is missing; expected START, ADMIN or NONE")
    if decay == "ADMIN":
        base = dict.fromkeys(uids, K.suvbw_factor_admin(weight, dose))
    elif decay == "START":
        t_ref, rule = reference_time(datasets, half_life, always_backcompute=always_backcompute)
        report["reference_time"], report["reference_rule"] = t_ref.isoformat(), rule
        interval = (t_ref - injection).total_seconds()
        if interval < 0:
            raise SuvError("SUV_NEGATIVE_DECAY_INTERVAL", f"reference time {t_ref.isoformat()} "
                           f"({report['reference_rule']}) is before injection {injection.isoformat()}")
        base = dict.fromkeys(uids, K.suvbw_factor_start(weight, dose, half_life, interval))
    elif decay == "NONE":
        base = {}
        for i, (uid, ds) in enumerate(zip(uids, datasets)):
            t_acq = acquisition_datetime(ds)
            if t_acq is None:
                raise SuvError("SUV_MISSING_ACQUISITION_TIME", f"image #{i}: AcquisitionDate/Time missing; "
                               "needed for DecayCorrection NONE")
            duration = header_number(ds.get("ActualFrameDuration"))
            if duration is None or duration <= 0:
                raise SuvError("SUV_MISSING_FRAME_DURATION", f"image #{i}: ActualFrameDuration (0018,1242) is "
                               f"{duration!r}; a positive duration (ms) is needed for DecayCorrection NONE")
            interval = (t_acq - injection).total_seconds()
            if interval < 0:
                raise SuvError("SUV_NEGATIVE_DECAY_INTERVAL", f"image #{i}: acquisition {t_acq.isoformat()} is "
                               f"before injection {injection.isoformat()}")
            base[uid] = K.suvbw_factor_none(weight, dose, half_life, interval, duration / 1000.0)
    else:
        raise SuvError("SUV_UNKNOWN_DECAY_CORRECTION", f"DecayCorrection (0054,1102) is {decay!r}; "
                       "expected START, ADMIN or NONE")
    if isinstance(scale, list):
        return {uid: base[uid] * s for uid, s in zip(uids, scale)}
    return base


def _radiopharmaceutical(datasets: list[Dataset], ov: SuvOverrides,
                         report: dict) -> tuple[float, float, _dt.datetime]:
    """Dose (Bq, MBq converted), half-life (s) and injection time from RadiopharmaceuticalInformationSequence[0]."""
    first = datasets[0]
    seq = first.get("RadiopharmaceuticalInformationSequence")
    item = seq[0] if seq else Dataset()
    if ov.dose_bq is not None:
        dose = ov.dose_bq
    else:
        dose = header_number(item.get("RadionuclideTotalDose"))
        if dose is None or dose <= 0:
            raise SuvError("SUV_MISSING_DOSE", "RadionuclideTotalDose (0018,1074) is missing or 0; "
                           "give a dose_bq override")
        if dose < MBQ_DOSE_LIMIT:  # an FDG dose is 1e8-1e9 Bq; a value this small was stored in MBq
            dose *= 1e6
            report["dose_unit_converted"] = True
    report["dose_bq"] = dose
    half_life = header_number(item.get("RadionuclideHalfLife"))
    if half_life is None or half_life <= 0:
        raise SuvError("SUV_MISSING_HALF_LIFE", "RadionuclideHalfLife (0018,1075) is missing or 0")
    report["half_life_s"] = half_life
    return dose, half_life, _injection_time(datasets, item, ov, report)


def _injection_time(datasets: list[Dataset], item: Dataset, ov: SuvOverrides, report: dict) -> _dt.datetime:
    """The override, else RadiopharmaceuticalStartDateTime, else StartTime on the series date."""
    if ov.injection_datetime is not None:
        injection, source = ov.injection_datetime, "override"
    else:
        injection = parse_datetime(item.get("RadiopharmaceuticalStartDateTime"))
        source = "start_datetime"
        if injection is None:
            injection, source = injection_from_start_time(datasets, item)
    report["injection_time"], report["injection_time_source"] = injection.isoformat(), source
    return injection


def _times_for_provenance(datasets: list[Dataset], ov: SuvOverrides, report: dict) -> None:
    """Scan start and (when the SUV branch did not need it) injection time, for the uptake time.

    Never refuses: a missing injection time only leaves ``injection_time`` None here.
    """
    acquisitions = [t for t in (acquisition_datetime(ds) for ds in datasets) if t is not None]
    if acquisitions:
        report["scan_time"] = min(acquisitions).isoformat()
    if report["injection_time"] is None and datasets:
        seq = datasets[0].get("RadiopharmaceuticalInformationSequence")
        try:
            _injection_time(datasets, seq[0] if seq else Dataset(), ov, report)
        except SuvError:
            pass


def _sul(report: dict, factors: dict[str, float] | None, lbm: str) -> None:
    """SUL = SUVbw * LBM / W; refused (reason recorded) without weight, height or sex M/F."""
    try:
        if report["sex"] is None:
            raise SuvError("SUV_MISSING_SEX", "PatientSex (0010,0040) is missing; give a sex override (M/F)")
        if report["sex"] not in ("M", "F"):
            raise SuvError("SUV_UNSUPPORTED_SEX", f"SUL needs PatientSex 'M' or 'F', got {report['sex']!r}; "
                           "SUVbw stays available")
        ratio, mass = K.sul_per_suvbw(_body(report), lbm=lbm)
    except SuvError as exc:
        report["suv_lbm_reason"], report["suv_lbm_message"] = exc.reason, exc.message
        return
    report["sul_per_suvbw"], report["lbm_kg"] = ratio, mass
    if factors is None:
        report["suv_lbm_reason"] = report["reason"]
        report["suv_lbm_message"] = "SUVbw refused, so SUL has no pixel factor: " + str(report["message"])
        return
    _collapse(report, {uid: f * ratio for uid, f in factors.items()}, "suv_lbm_factor", "suv_lbm_factors")
