"""SUVbw, SUL and body-size formulas (docs/methods.md "SUV from DICOM" and "SUL").

Pure: numbers and frozen dataclasses in, numbers out; no DICOM, no IO. The
DICOM-level parsing (which tag, which rule) lives in ``storage/suv_header.py``.

Sources: QIBA "Standardized Uptake Value (SUV)" vendor-neutral pseudo-code
(RSNA QIBA wiki); IBSI-SUV "Comprehensive Manual for SUV Computation"
(oncoray/suv_computation, CC BY 4.0) for the GML/CM2ML conversions and the
frame-average time; Janmahasatian et al., Clin Pharmacokinet 2005 (LBM);
Du Bois & Du Bois 1916 (BSA); James 1976 via Sugawara et al. 1999 (LBM).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from petcohort.engine.errors import SuvError

__all__ = [
    "Body",
    "decay_constant",
    "frame_decay_correction",
    "frame_average_time",
    "suvbw_factor_start",
    "suvbw_factor_admin",
    "suvbw_factor_none",
    "lbm_janmahasatian",
    "lbm_james",
    "lbm_morgan",
    "ideal_body_weight",
    "bsa_dubois",
    "gml_to_suvbw",
    "sul_per_suvbw",
    "SUV_TYPES",
]

#: SUVType (0054,1006) values whose GML images we can convert to SUVbw.
SUV_TYPES = ("BW", "LBM", "LBMJAMES128", "LBMJANMA", "IBW", "BSA")


@dataclass(frozen=True)
class Body:
    """Patient body measures.

    Parameters
    ----------
    weight_kg : float
        Body weight in kg (> 0).
    height_m : float or None
        Height in metres.
    sex : str or None
        ``"M"``, ``"F"`` or ``"O"`` (DICOM PatientSex).
    """

    weight_kg: float
    height_m: float | None = None
    sex: str | None = None


def _positive(name: str, value: float) -> float:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise SuvError("BAD_VALUE", f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def decay_constant(half_life_s: float) -> float:
    """lambda = ln 2 / half-life, in 1/s."""
    return math.log(2.0) / _positive("half_life_s", half_life_s)


def frame_decay_correction(half_life_s: float, duration_s: float) -> float:
    """lambda T_d / (1 - exp(-lambda T_d)): converts a frame's mean activity to its start.

    Tends to 1 as ``duration_s`` tends to 0 (the limit is returned for 0).
    """
    lam = decay_constant(half_life_s)
    if duration_s < 0:
        raise SuvError("BAD_VALUE", f"duration_s must be >= 0, got {duration_s!r}")
    x = lam * duration_s
    if x == 0:
        return 1.0
    # -expm1(-x) = 1 - exp(-x) without cancellation for short frames
    return x / -math.expm1(-x)


def frame_average_time(half_life_s: float, duration_s: float) -> float:
    """T_ave = (1/lambda) ln(lambda T_d / (1 - exp(-lambda T_d))), in seconds.

    The time after the frame start at which the instantaneous activity equals
    the frame's average (IBSI-SUV manual, back-computation of the start time).
    """
    lam = decay_constant(half_life_s)
    return math.log(frame_decay_correction(half_life_s, duration_s)) / lam


def suvbw_factor_start(weight_kg: float, dose_bq: float, half_life_s: float, interval_s: float) -> float:
    """SUVbw per Bq/mL for DecayCorrection START.

    SUVbw = C * W[g] / (dose * exp(-lambda (t_ref - t_inj))).

    Parameters
    ----------
    interval_s : float
        t_ref - t_inj in seconds (>= 0).
    """
    if interval_s < 0:
        raise SuvError("SUV_NEGATIVE_DECAY_INTERVAL",
                       f"decay interval (reference - injection) must be >= 0 s, got {interval_s!r} s")
    w = _positive("weight_kg", weight_kg)
    d = _positive("dose_bq", dose_bq)
    lam = decay_constant(half_life_s)
    return w * 1000.0 / (d * math.exp(-lam * interval_s))


def suvbw_factor_admin(weight_kg: float, dose_bq: float) -> float:
    """SUVbw per Bq/mL for DecayCorrection ADMIN (already corrected to injection): W[g] / dose."""
    return _positive("weight_kg", weight_kg) * 1000.0 / _positive("dose_bq", dose_bq)


def suvbw_factor_none(weight_kg: float, dose_bq: float, half_life_s: float, interval_s: float,
                      duration_s: float) -> float:
    """SUVbw per Bq/mL of one image that is not decay-corrected (DecayCorrection NONE).

    SUVbw = C * W / dose * exp(lambda (t_acq - t_inj)) * lambda T_d / (1 - exp(-lambda T_d)).

    Parameters
    ----------
    interval_s : float
        t_acq - t_inj of this image, seconds (>= 0).
    duration_s : float
        Frame duration T_d of this image, seconds.
    """
    if interval_s < 0:
        raise SuvError("SUV_NEGATIVE_DECAY_INTERVAL",
                       f"decay interval (acquisition - injection) must be >= 0 s, got {interval_s!r} s")
    w = _positive("weight_kg", weight_kg)
    d = _positive("dose_bq", dose_bq)
    lam = decay_constant(half_life_s)
    return w * 1000.0 / d * math.exp(lam * interval_s) * frame_decay_correction(half_life_s, duration_s)


def _sex_mean(sex: str | None, male: float, female: float, *, allow_other: bool) -> float:
    if sex == "M":
        return male
    if sex == "F":
        return female
    if sex == "O" and allow_other:
        return 0.5 * (male + female)
    raise SuvError("SUV_UNSUPPORTED_SEX",
                   f"sex must be 'M' or 'F'{' or O' if allow_other else ''} for this formula, got {sex!r}")


def lbm_janmahasatian(body: Body, *, allow_other: bool = False) -> float:
    """Lean body mass (kg), Janmahasatian 2005; BMI with H in metres.

    Male 9270 W / (6680 + 216 BMI); female 9270 W / (8780 + 244 BMI).
    ``allow_other`` gives the mean of both for sex ``"O"`` (GML conversion only;
    SUL refuses other sexes).
    """
    w = _positive("weight_kg", body.weight_kg)
    h = _positive("height_m", body.height_m)
    bmi = w / (h * h)
    return _sex_mean(body.sex, 9270.0 * w / (6680.0 + 216.0 * bmi), 9270.0 * w / (8780.0 + 244.0 * bmi),
                     allow_other=allow_other)


def lbm_james(body: Body, *, allow_other: bool = False) -> float:
    """Lean body mass (kg), James (LBMJAMES128): male 1.10 W - 128 (W/H)^2, female 1.07 W - 148 (W/H)^2, H in cm."""
    w = _positive("weight_kg", body.weight_kg)
    h = _positive("height_m", body.height_m) * 100.0
    return _sex_mean(body.sex, 1.10 * w - 128.0 * (w / h) ** 2, 1.07 * w - 148.0 * (w / h) ** 2,
                     allow_other=allow_other)


def lbm_morgan(body: Body, *, allow_other: bool = False) -> float:
    """Lean body mass (kg), the DICOM "LBM" (Morgan).

    Male 1.10 W - 120 (W/H)^2, female 1.07 W - 148 (W/H)^2, H in cm.
    """
    w = _positive("weight_kg", body.weight_kg)
    h = _positive("height_m", body.height_m) * 100.0
    return _sex_mean(body.sex, 1.10 * w - 120.0 * (w / h) ** 2, 1.07 * w - 148.0 * (w / h) ** 2,
                     allow_other=allow_other)


def ideal_body_weight(body: Body, *, allow_other: bool = False) -> float:
    """Ideal body weight (kg): male 48.0 + 1.06 (H - 152), female 45.5 + 0.91 (H - 152), H in cm."""
    h = _positive("height_m", body.height_m) * 100.0
    return _sex_mean(body.sex, 48.0 + 1.06 * (h - 152.0), 45.5 + 0.91 * (h - 152.0), allow_other=allow_other)


def bsa_dubois(body: Body) -> float:
    """Body surface area (m^2), Du Bois: 0.007184 H[cm]^0.725 W[kg]^0.425."""
    w = _positive("weight_kg", body.weight_kg)
    h = _positive("height_m", body.height_m) * 100.0
    return 0.007184 * h ** 0.725 * w ** 0.425


def gml_to_suvbw(suv_type: str, body: Body) -> float:
    """Factor turning an SUV of type ``suv_type`` into SUVbw.

    GML types (BW, LBM, LBMJAMES128, LBMJANMA, IBW): W / X, X the normalising
    mass in kg; sex ``"O"`` uses the mean of the two sex-specific values
    (IBSI-SUV manual). BSA (CM2ML images): W[g] / (BSA[m^2] * 1e4).
    """
    if suv_type == "BW":
        return 1.0
    w = _positive("weight_kg", body.weight_kg)
    if suv_type == "BSA":
        return w * 1000.0 / (bsa_dubois(body) * 1e4)
    formulas = {"LBM": lbm_morgan, "LBMJAMES128": lbm_james, "LBMJANMA": lbm_janmahasatian,
                "IBW": ideal_body_weight}
    if suv_type not in formulas:
        raise SuvError("SUV_UNSUPPORTED_SUV_TYPE", f"SUVType must be one of {SUV_TYPES}, got {suv_type!r}")
    mass = formulas[suv_type](body, allow_other=True)
    if mass <= 0:
        raise SuvError("SUV_MASS_NOT_POSITIVE", f"{suv_type} mass from weight {w} kg and height {body.height_m} m "
                       f"is {mass:.3f} kg; expected > 0")
    return w / mass


def sul_per_suvbw(body: Body, *, lbm: str = "janmahasatian") -> tuple[float, float]:
    """SUL / SUVbw = LBM / W, and the LBM (kg).

    Parameters
    ----------
    lbm : {"janmahasatian", "james"}
        LBM formula; Janmahasatian is the default (docs/methods.md "SUL").

    Raises
    ------
    SuvError
        ``SUV_UNSUPPORTED_SEX`` for sex other than M/F.
    """
    if body.sex not in ("M", "F"):
        raise SuvError("SUV_UNSUPPORTED_SEX", f"SUL needs sex 'M' or 'F', got {body.sex!r}")
    if lbm == "janmahasatian":
        mass = lbm_janmahasatian(body)
    elif lbm == "james":
        mass = lbm_james(body)
    else:
        raise SuvError("BAD_VALUE", f"lbm must be 'janmahasatian' or 'james', got {lbm!r}")
    if mass <= 0:
        raise SuvError("SUV_MASS_NOT_POSITIVE", f"LBM ({lbm}) is {mass:.3f} kg; expected > 0")
    return mass / body.weight_kg, mass
