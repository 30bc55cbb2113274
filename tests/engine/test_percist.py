"""Tests of automated PERCIST 1.0: hand-computed calls on ScanAssessment objects, one array test."""
from __future__ import annotations

import numpy as np
import pytest

from petcohort.engine.errors import InputError
from petcohort.engine.kernels.reference import Reference
from petcohort.engine.stats.percist import (UNASSIGNED, LesionAssessment, assess_scan, make_assessment,
                                            organ_group, organ_of_lesions, percist_call, select_top, threshold_for)

LIVER = Reference(1.0, 0.1, 1000, (0, 0, 0), "liver")  # threshold 1.5 + 0.2 = 1.7


def les(label, peak, tlg=10.0, organ=None, volume=5.0):
    return LesionAssessment(label, peak, organ, volume, tlg)


def scan(*lesions, ref=LIVER):
    return make_assessment(ref, lesions)


def call(bl, fu, new=0, **kw):
    return percist_call(bl, fu, new_lesions=new, uptake_min=kw.pop("uptake_min", (60.0, 62.0)), **kw)


def test_thresholds_liver_and_blood_pool():
    assert threshold_for(LIVER) == pytest.approx(1.7)
    assert threshold_for(Reference(1.0, 0.1, 100, (0, 0, 0), "blood_pool")) == pytest.approx(2.2)
    s = scan(les(1, 1.7), les(2, 1.69))
    assert [x.measurable for x in s.lesions] == [True, False]
    assert s.target.label == 1 and s.hottest.label == 1


def test_baseline_not_measurable():
    c = call(scan(les(1, 1.6)), scan(les(1, 3.0)))
    assert c.category is None and c.reason == "PERCIST_BASELINE_NOT_MEASURABLE" and c.rule is None
    assert call(scan(), scan()).reason == "PERCIST_BASELINE_NOT_MEASURABLE"


def test_new_lesion_is_pmd_even_when_target_responds():
    c = call(scan(les(1, 4.0)), scan(les(1, 2.0), les(2, 1.2)), new=1)
    assert (c.category, c.rule) == ("PMD", "new_lesion")
    assert c.evidence["sulpeak_delta_pct"] == pytest.approx(-50.0)


def test_cmr_all_lesions_at_or_below_liver_mean():
    c = call(scan(les(1, 4.0), les(2, 3.0)), scan(les(1, 1.0), les(2, 0.8)))
    assert (c.category, c.rule) == ("CMR", "all_lesions_to_background")
    c = call(scan(les(1, 4.0)), scan())
    assert (c.category, c.rule) == ("CMR", "all_lesions_to_background")
    assert c.evidence["followup_target"] is None
    # just above the liver mean is not CMR: -72.5 % and -2.9 SUL -> PMR
    c = call(scan(les(1, 4.0)), scan(les(1, 1.1)))
    assert (c.category, c.rule) == ("PMR", "sulpeak_down_30pct_0.8")


def test_pmd_sulpeak_needs_both_30pct_and_08():
    c = call(scan(les(1, 4.0)), scan(les(1, 5.3)))  # +32.5 %, +1.3
    assert (c.category, c.rule) == ("PMD", "sulpeak_up_30pct_0.8")
    assert c.evidence["sulpeak_delta_pct"] == pytest.approx(32.5)
    assert c.evidence["sulpeak_delta_abs"] == pytest.approx(1.3)
    c = call(scan(les(1, 4.0)), scan(les(1, 5.1)))  # +27.5 %
    assert (c.category, c.rule) == ("SMD", "otherwise")
    c = call(scan(les(1, 2.0)), scan(les(1, 2.7)))  # +35 % but +0.7
    assert (c.category, c.rule) == ("SMD", "otherwise")


def test_pmd_tlg5_up_75pct():
    c = call(scan(les(1, 4.0, tlg=10.0)), scan(les(1, 4.2, tlg=18.0)))  # TLG5 +80 %
    assert (c.category, c.rule) == ("PMD", "tlg_up_75pct")
    assert c.evidence["tlg5_delta_pct"] == pytest.approx(80.0)
    # docs/methods.md: the TLG rule alone decides, even when the SULpeak declined ...
    c = call(scan(les(1, 4.0, tlg=10.0)), scan(les(1, 3.9, tlg=18.0)))
    assert (c.category, c.rule) == ("PMD", "tlg_up_75pct")
    # ... Wahl's "with no decline in SUL" clause is an option.
    c = call(scan(les(1, 4.0, tlg=10.0)), scan(les(1, 3.9, tlg=18.0)), tlg_requires_no_sul_decline=True)
    assert (c.category, c.rule) == ("SMD", "otherwise")
    c = call(scan(les(1, 4.0, tlg=10.0)), scan(les(1, 4.2, tlg=17.0)))  # +70 %
    assert (c.category, c.rule) == ("SMD", "otherwise")


def test_pmr_needs_both_30pct_and_08():
    c = call(scan(les(1, 4.0)), scan(les(1, 2.6)))  # -35 %, -1.4
    assert (c.category, c.rule) == ("PMR", "sulpeak_down_30pct_0.8")
    c = call(scan(les(1, 2.0)), scan(les(1, 1.3)))  # -35 % but -0.7
    assert (c.category, c.rule) == ("SMD", "otherwise")
    c = call(scan(les(1, 4.0)), scan(les(1, 3.0)))  # -25 %
    assert (c.category, c.rule) == ("SMD", "otherwise")


def test_target_may_be_a_different_lesion_on_each_scan():
    bl = scan(les(1, 4.0), les(2, 2.0))
    fu = scan(les(1, 1.0), les(2, 2.5))  # lesion 2 is now the hottest (below threshold 1.7? no: 2.5)
    c = call(bl, fu)
    assert c.evidence["baseline_target"]["label"] == 1
    assert c.evidence["followup_target"]["label"] == 2
    assert c.evidence["sulpeak_delta_pct"] == pytest.approx(-37.5)
    assert (c.category, c.rule) == ("PMR", "sulpeak_down_30pct_0.8")


def test_followup_target_need_not_be_measurable():
    fu = scan(les(1, 1.5))  # below 1.7 but above the liver mean
    assert fu.target is None and fu.hottest.label == 1
    c = call(scan(les(1, 3.0)), fu)  # -50 %, -1.5
    assert (c.category, c.rule) == ("PMR", "sulpeak_down_30pct_0.8")


def test_top5_at_most_two_per_organ():
    lesions = [les(1, 9.0, 1.0, "bone"), les(2, 8.0, 2.0, "bone"), les(3, 7.0, 4.0, "bone"),
               les(4, 6.0, 8.0, "liver"), les(5, 5.0, 16.0, "liver"), les(6, 4.5, 32.0, "liver"),
               les(7, 4.0, 64.0, "other"), les(8, 3.0, 128.0, "other"), les(9, 1.0, 256.0, "other")]
    s = scan(*lesions)
    assert [x.label for x in s.top5] == [1, 2, 4, 5, 7]
    assert s.sulpeak5 == pytest.approx(9 + 8 + 6 + 5 + 4)
    assert s.tlg5 == pytest.approx(1 + 2 + 8 + 16 + 64)
    # a non-measurable lesion (label 9) never enters the baseline top 5
    assert 9 not in [x.label for x in s.top5]


def test_lesions_without_organ_share_one_capped_group():
    # None and "other" (no organ mask claims the lesion) are one group "unassigned", capped at 2 like an organ
    mixed = [les(1, 3.0, organ=None), les(2, 2.9, organ="other"), les(3, 2.8, organ=None),
             les(4, 2.7, organ="bone"), les(5, 2.6, organ="other")]
    assert [x.label for x in select_top(mixed)] == [1, 2, 4]
    assert [x.label for x in select_top([les(i, 5.0 - i) for i in range(1, 5)])] == [1, 2]
    assert organ_group(None) == organ_group("other") == UNASSIGNED == "unassigned"
    assert organ_group("liver") == "liver"
    bl = scan(*mixed)
    fu = scan(les(1, 2.9, organ=None), les(2, 2.8, organ=None), les(3, 2.75, organ=None))
    c = call(bl, fu)
    ev = c.evidence
    assert ev["baseline_top5"] == [1, 2, 4] and ev["baseline_top5_groups"] == ["unassigned", "unassigned", "bone"]
    assert ev["followup_top5"] == [1, 2] and ev["followup_top5_groups"] == ["unassigned", "unassigned"]
    assert "unassigned" in ev["per_organ_cap"]
    assert ev["tlg5_baseline"] == pytest.approx(30.0) and ev["tlg5_followup"] == pytest.approx(20.0)


def test_qc_flags():
    bl, fu = scan(les(1, 4.0)), scan(les(1, 4.1), ref=Reference(1.25, 0.1, 900, (0, 0, 0), "liver"))
    c = call(bl, fu)  # +25 % and +0.25: outside 20 %
    assert "LIVER_REFERENCE_UNSTABLE" in c.qc_flags
    fu = scan(les(1, 4.1), ref=Reference(1.1, 0.1, 900, (0, 0, 0), "liver"))
    assert call(bl, fu).qc_flags == ()
    high = Reference(2.0, 0.1, 900, (0, 0, 0), "liver")
    higher = Reference(2.35, 0.1, 900, (0, 0, 0), "liver")  # +17.5 % but +0.35 SUL
    assert "LIVER_REFERENCE_UNSTABLE" in call(scan(les(1, 6.0), ref=high), scan(les(1, 6.0), ref=higher)).qc_flags
    assert call(bl, fu, uptake_min=(60.0, 80.0)).qc_flags == ("UPTAKE_TIME_DIFFERS",)
    assert call(bl, fu, uptake_min=(60.0, None)).qc_flags == ("UPTAKE_TIME_UNKNOWN",)
    bp = Reference(1.0, 0.1, 200, (0, 0, 0), "blood_pool")
    assert "REFERENCE_SOURCE_DIFFERS" in call(bl, scan(les(1, 4.1), ref=bp)).qc_flags


def test_bad_new_lesions():
    with pytest.raises(InputError) as err:
        call(scan(les(1, 4.0)), scan(les(1, 4.0)), new=-1)
    assert err.value.reason == "BAD_VALUE"


def test_evidence_is_json_serialisable():
    import json

    c = call(scan(les(1, 4.0)), scan(les(1, 5.3)))
    d = json.loads(json.dumps(c.to_dict()))
    assert d["category"] == "PMD" and d["evidence"]["baseline_threshold"] == pytest.approx(1.7)


def test_assess_scan_small_array():
    spacing = (4.0, 4.0, 4.0)
    shape = (14, 14, 30)
    sul = np.full(shape, 0.5, np.float32)
    liver = np.zeros(shape, np.uint8)
    liver[2:12, 2:12, 2:12] = 1
    sul[liver == 1] = 1.0  # SD 0 -> threshold 1.5
    labels = np.zeros(shape, np.int32)
    labels[5:8, 5:8, 20:23] = 1
    sul[labels == 1] = 4.0
    labels[10, 10, 27] = 2
    sul[10, 10, 27] = 1.2
    organs = organ_of_lesions(labels, 2, bone=(labels == 1), liver=liver)
    assert organs == {1: "bone", 2: "other"}
    s = assess_scan(sul, labels, 2, spacing=spacing, liver=liver, organ_of=organs)
    assert s.reference.source == "liver" and s.reference.mean == pytest.approx(1.0)
    assert s.threshold == pytest.approx(1.5)
    l1, l2 = s.lesions
    # 19 neighbours within 6.2035 mm at 4 mm (centre, 6 faces, 12 edges), all inside the cube
    assert l1.sulpeak == pytest.approx(4.0)
    assert l1.volume_ml == pytest.approx(27 * 0.064)
    assert l1.tlg == pytest.approx(27 * 0.064 * 4.0)
    assert l1.measurable and l1.organ == "bone"
    # single voxel 1.2 among 18 background voxels of 0.5
    assert l2.sulpeak == pytest.approx((1.2 + 18 * 0.5) / 19, rel=1e-6)
    assert not l2.measurable
    assert s.target.label == 1 and [x.label for x in s.top5] == [1]
    only2 = assess_scan(sul, labels, 2, spacing=spacing, liver=liver, lesion_ids=[2])
    assert [x.label for x in only2.lesions] == [2] and only2.target is None
    with pytest.raises(InputError):
        assess_scan(sul, labels, 2, spacing=spacing, liver=liver, lesion_ids=[3])


def test_new_lesion_labels_count_only_when_fdg_avid():
    bl = scan(les(1, 4.0))
    fu = scan(les(1, 2.6), les(2, 0.9, tlg=1.0), les(3, 1.2, tlg=1.0))  # liver mean 1.0: 2 is background, 3 avid
    c = call(bl, fu, new=[2])
    assert (c.category, c.rule) == ("PMR", "sulpeak_down_30pct_0.8")
    assert c.evidence["new_lesions"] == 0 and c.evidence["new_not_avid_labels"] == [2]
    c = call(bl, fu, new=[2, 3])
    assert (c.category, c.rule) == ("PMD", "new_lesion") and c.evidence["new_lesion_labels"] == [3]
    with pytest.raises(InputError) as err:
        call(bl, fu, new=[7])
    assert err.value.reason == "BAD_VALUE"


def test_assess_scan_blood_pool_threshold():
    spacing = (2.0, 2.0, 2.0)
    shape = (20, 16, 24)
    z, y, x = np.indices(shape)
    aorta = ((y - 8) * 2.0) ** 2 + ((x - 8) * 2.0) ** 2 <= 81.0
    sul = np.full(shape, 0.5, np.float32)
    sul[aorta] = 1.0
    labels = np.zeros(shape, np.int32)
    labels[8:12, 6:10, 18:22] = 1
    sul[labels == 1] = 2.1
    s = assess_scan(sul, labels, 1, spacing=spacing, liver=None, aorta=aorta)
    assert s.reference.source == "blood_pool" and s.reference.fallback_reason == "NO_LIVER_MASK"
    assert s.threshold == pytest.approx(2.0)  # 2.0 x 1.0 + 2 x 0
    # brute-force SULpeak: max over lesion voxels of the mean within 6.2035 mm
    best = max(sul[(((z - a) * 2.0) ** 2 + ((y - b) * 2.0) ** 2 + ((x - c) * 2.0) ** 2) <= 6.2035 ** 2].mean()
               for a, b, c in np.argwhere(labels == 1))
    assert s.lesions[0].sulpeak == pytest.approx(best, rel=1e-6)
    assert best < 2.0 and s.target is None
