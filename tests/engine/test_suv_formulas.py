"""SUV/SUL formulas (engine/kernels/suv.py) against hand-computed numbers (docs/methods.md)."""
import math

import pytest

from petcohort.engine.errors import SuvError
from petcohort.engine.kernels import suv as K

F18 = 6586.2
LAM = math.log(2) / F18


def test_decay_constant_and_frame_terms():
    assert K.decay_constant(F18) == pytest.approx(0.693147180559945 / 6586.2, rel=1e-14)
    # lambda T_d / (1 - exp(-lambda T_d)) for a 180 s frame
    x = LAM * 180.0
    assert K.frame_decay_correction(F18, 180.0) == pytest.approx(x / (1 - math.exp(-x)), rel=1e-13)
    assert K.frame_decay_correction(F18, 0.0) == 1.0
    # T_ave = ln(that) / lambda: a bit less than half the frame (activity decays during it)
    t_ave = K.frame_average_time(F18, 180.0)
    assert t_ave == pytest.approx(math.log(x / (1 - math.exp(-x))) / LAM, rel=1e-12)
    assert 89.0 < t_ave < 90.0


def test_suvbw_start_admin_none():
    # 70 kg, 350 MBq, reference 3600 s after injection
    expected = 70_000.0 / (3.5e8 * math.exp(-LAM * 3600.0))
    assert K.suvbw_factor_start(70.0, 3.5e8, F18, 3600.0) == pytest.approx(expected, rel=1e-14)
    assert K.suvbw_factor_admin(70.0, 3.5e8) == pytest.approx(70_000.0 / 3.5e8, rel=1e-15)
    x = LAM * 120.0
    expected_none = 70_000.0 / 3.5e8 * math.exp(LAM * 4000.0) * x / (1 - math.exp(-x))
    assert K.suvbw_factor_none(70.0, 3.5e8, F18, 4000.0, 120.0) == pytest.approx(expected_none, rel=1e-13)


def test_negative_interval_and_bad_values_refused():
    with pytest.raises(SuvError) as e:
        K.suvbw_factor_start(70.0, 3.5e8, F18, -1.0)
    assert e.value.reason == "SUV_NEGATIVE_DECAY_INTERVAL"
    with pytest.raises(SuvError) as e:
        K.suvbw_factor_none(70.0, 3.5e8, F18, -5.0, 120.0)
    assert e.value.reason == "SUV_NEGATIVE_DECAY_INTERVAL"
    for bad in (0.0, -3.0, float("nan"), None):
        with pytest.raises(SuvError) as e:
            K.suvbw_factor_admin(bad, 3.5e8)
        assert e.value.reason == "BAD_VALUE"
        assert "weight_kg" in e.value.message


def test_lbm_janmahasatian_by_hand():
    w, h = 70.0, 1.65
    bmi = w / h ** 2                       # 25.7117...
    female = 9270 * w / (8780 + 244 * bmi)
    male = 9270 * w / (6680 + 216 * bmi)
    assert K.lbm_janmahasatian(K.Body(w, h, "F")) == pytest.approx(female, rel=1e-14)
    assert K.lbm_janmahasatian(K.Body(w, h, "M")) == pytest.approx(male, rel=1e-14)
    assert K.lbm_janmahasatian(K.Body(w, h, "O"), allow_other=True) == pytest.approx((male + female) / 2)
    ratio, mass = K.sul_per_suvbw(K.Body(w, h, "F"))
    assert mass == pytest.approx(female) and ratio == pytest.approx(female / w)
    assert 40 < female < 46  # a 70 kg, 165 cm woman: ~43 kg lean mass


def test_james_morgan_ibw_bsa_by_hand():
    w, hcm = 80.0, 180.0
    body_m, body_f = K.Body(w, hcm / 100, "M"), K.Body(w, hcm / 100, "F")
    assert K.lbm_james(body_m) == pytest.approx(1.10 * w - 128 * (w / hcm) ** 2)
    assert K.lbm_james(body_f) == pytest.approx(1.07 * w - 148 * (w / hcm) ** 2)
    assert K.lbm_morgan(body_m) == pytest.approx(1.10 * w - 120 * (w / hcm) ** 2)
    assert K.ideal_body_weight(body_m) == pytest.approx(48.0 + 1.06 * (hcm - 152))
    assert K.ideal_body_weight(body_f) == pytest.approx(45.5 + 0.91 * (hcm - 152))
    assert K.bsa_dubois(body_m) == pytest.approx(0.007184 * hcm ** 0.725 * w ** 0.425)
    assert 1.9 < K.bsa_dubois(body_m) < 2.1
    ratio, mass = K.sul_per_suvbw(body_f, lbm="james")
    assert mass == pytest.approx(1.07 * w - 148 * (w / hcm) ** 2)


def test_gml_conversion_factors():
    w, h = 60.0, 1.60
    hcm = 160.0
    assert K.gml_to_suvbw("BW", K.Body(w, h, "F")) == 1.0
    assert K.gml_to_suvbw("IBW", K.Body(w, h, "F")) == pytest.approx(w / (45.5 + 0.91 * (hcm - 152)))
    mean_ibw = ((48.0 + 1.06 * 8) + (45.5 + 0.91 * 8)) / 2
    assert K.gml_to_suvbw("IBW", K.Body(w, h, "O")) == pytest.approx(w / mean_ibw)
    assert K.gml_to_suvbw("LBM", K.Body(w, h, "M")) == pytest.approx(w / (1.10 * w - 120 * (w / hcm) ** 2))
    assert K.gml_to_suvbw("LBMJAMES128", K.Body(w, h, "M")) == pytest.approx(w / (1.10 * w - 128 * (w / hcm) ** 2))
    bmi = w / h ** 2
    assert K.gml_to_suvbw("LBMJANMA", K.Body(w, h, "F")) == pytest.approx(w / (9270 * w / (8780 + 244 * bmi)))
    bsa = 0.007184 * hcm ** 0.725 * w ** 0.425
    assert K.gml_to_suvbw("BSA", K.Body(w, h, "F")) == pytest.approx(w * 1000 / (bsa * 1e4))
    with pytest.raises(SuvError) as e:
        K.gml_to_suvbw("XYZ", K.Body(w, h, "F"))
    assert e.value.reason == "SUV_UNSUPPORTED_SUV_TYPE"


def test_sul_refuses_other_sex_and_bad_option():
    with pytest.raises(SuvError) as e:
        K.sul_per_suvbw(K.Body(70.0, 1.7, "O"))
    assert e.value.reason == "SUV_UNSUPPORTED_SEX"
    with pytest.raises(SuvError) as e:
        K.sul_per_suvbw(K.Body(70.0, 1.7, "F"), lbm="boer")
    assert e.value.reason == "BAD_VALUE"
    with pytest.raises(SuvError) as e:
        K.sul_per_suvbw(K.Body(70.0, None, "F"))
    assert e.value.reason == "BAD_VALUE" and "height_m" in e.value.message
