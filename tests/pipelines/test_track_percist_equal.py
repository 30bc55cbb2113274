"""``track`` and ``percist`` on a synthetic cohort equal their straightforward whole-volume computation.

The stages cut work (baseline labels resampled only over the boxes that can
hold a label, one liver site and one read of each array per study, reductions
over lesion voxels only); these tests recompute every summary the direct way
(nearest-neighbour resampling of each source over the whole follow-up grid,
whole-volume organ rule, the liver mask itself) and require identical
summaries.
"""
from __future__ import annotations

import numpy as np
import pytest

from petcohort.engine.kernels.lesions import lesion_organs
from petcohort.engine.kernels.sulpeak import lesion_peaks
from petcohort.engine.stats.percist import assess_scan, percist_call
from petcohort.pipelines import stage_track
from petcohort.pipelines.config import RunConfig
from petcohort.pipelines.lesion_labels import study_lesion_labels
from petcohort.pipelines.run import run_cohort
from petcohort.pipelines.stages import STAGES, StageContext, load_stages
from petcohort.storage.store import CohortStore

pytest.importorskip("ants", reason="antspyx is not installed: no registration, so no 'registered' tracking")

STAGE_NAMES = ["organs", "threshold", "register", "quantify", "track", "percist"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from distributed import Client, LocalCluster

    from petcohort.pipelines.synthetic import synthesize

    url = str(tmp_path_factory.mktemp("equal") / "cohort")
    synthesize(url, patients=2, sites=1, seed=0, fov_scale=0.5)
    load_stages()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as client:
        summary = run_cohort(url, stages=STAGE_NAMES, client=client)
    assert not summary.failed
    store = CohortStore.open(url, mode="r")
    attrs = {k: store.study_attrs(k) for k in store.study_keys()}
    base = {a["patient"]: k for k, a in attrs.items() if a.get("timepoint") == 0}
    followups = sorted(k for k, a in attrs.items() if a.get("timepoint", 0) > 0)
    assert followups
    return store, [StageContext(store, k, attrs[k], RunConfig(), base[attrs[k]["patient"]]) for k in followups]


def _summary(store, key, stage):
    rec = store.stage_record(key, stage)
    assert rec is not None and rec["status"] == "committed"
    return rec["summary"]


def _whole_grid(transform, bl_labels, battrs, fu_shape, fattrs):
    """Baseline labels resampled over the whole follow-up grid (no boxes)."""
    from petcohort.engine.kernels.resample import resample_affine
    from petcohort.engine.segment.rigid import Geometry, RigidTransform, index_affine

    matrix, offset = index_affine(RigidTransform.from_dict(transform), Geometry.from_attrs(battrs),
                                  Geometry.from_attrs(fattrs))
    return resample_affine(np.asarray(bl_labels, np.int32), matrix, offset, fu_shape, order=0, dtype=np.int32)


def test_track_equals_whole_grid_resampling(cohort, monkeypatch):
    store, contexts = cohort
    monkeypatch.setattr(stage_track, "_apply_registration", _whole_grid)
    methods = set()
    for ctx in contexts:
        stored = _summary(store, ctx.key, "track")
        assert STAGES["track"].fn(ctx).summary == stored
        methods |= {rec["method"] for rec in stored["sources"].values()}
    assert "registered" in methods


def _direct_assessment(ctx, key, src):
    """One scan's PERCIST assessment from whole arrays (liver mask, whole-volume organ rule)."""
    attrs = ctx.store.study_attrs(key)
    sul = ctx.store.read_array(key, "pet").astype(np.float32) * np.float32(attrs["sul_per_suvbw"])

    def organ(name):
        return ctx.store.read_array(key, f"organs/{name}") if ctx.store.has_array(key, f"organs/{name}") else None

    lesions = study_lesion_labels(ctx.store, key, src, connectivity=ctx.config.connectivity)
    organs = lesion_organs(lesions.labels, lesions.n, bone=organ("bone"), liver=organ("liver"))
    spacing = [float(s) for s in attrs["spacing"]]
    # SULpeak as the quantify stage defines it: the SUVbw peak times the SUL factor
    peaks = lesion_peaks(ctx.store.read_array(key, "pet"), lesions.labels, lesions.n, spacing=spacing,
                         radius_mm=ctx.config.radius_mm)
    return assess_scan(sul, lesions.labels, lesions.n, spacing=spacing,
                       liver=organ("liver"), aorta=organ("aorta"), organ_of=organs, radius_mm=ctx.config.radius_mm,
                       sphere_mm=ctx.config.percist_sphere_mm,
                       sulpeaks=[p.global_peak * float(attrs["sul_per_suvbw"]) for p in peaks])


def test_percist_equals_direct_assessment(cohort):
    store, contexts = cohort
    n_called = 0
    for ctx in contexts:
        track = _summary(store, ctx.key, "track")
        stored = _summary(store, ctx.key, "percist")["sources"]
        assert sorted(stored) == sorted(track["sources"])
        battrs = store.study_attrs(ctx.baseline_key)
        for src, rec in track["sources"].items():
            bl = _direct_assessment(ctx, ctx.baseline_key, rec["baseline_source"])
            fu = _direct_assessment(ctx, ctx.key, src)
            new = [m["followup_lesion"] for m in rec["matches"] if m["status"] == "new"]
            call = percist_call(bl, fu, new_lesions=new, uptake_min=(battrs.get("uptake_min"),
                                                                     ctx.attrs.get("uptake_min")),
                                **ctx.config.percist.call_options())
            assert stored[src] == {**call.to_dict(), "baseline_source": rec["baseline_source"]}
            n_called += call.category is not None
    assert n_called > 0


def test_percist_takes_the_quantify_peaks_which_equal_its_own(cohort, monkeypatch):
    """The SULpeaks read from the quantify records give the same summaries as those computed in the stage,
    and the stage does read them: no peak is computed while every record holds its sources."""
    from petcohort.pipelines import stage_percist

    store, contexts = cohort
    stored = {ctx.key: _summary(store, ctx.key, "percist") for ctx in contexts}
    computed = []
    real_peaks = stage_percist.lesion_peaks
    monkeypatch.setattr(stage_percist, "lesion_peaks", lambda *a, **k: computed.append(1) or real_peaks(*a, **k))
    for ctx in contexts:
        assert STAGES["percist"].fn(ctx).summary == stored[ctx.key]
    assert computed == []
    monkeypatch.setattr(stage_percist, "_quantified_lesions", lambda ctx, key: {})   # no record: computed here
    for ctx in contexts:
        assert STAGES["percist"].fn(ctx).summary == stored[ctx.key]
    assert computed
