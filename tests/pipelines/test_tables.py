"""Cohort outputs from hand-made stage records in a memory store: tables, results.zarr, ds.cohort."""
import itertools
import json
import uuid

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from petcohort.engine.stats.agreement import lins_ccc
from petcohort.engine.stats.ranks import wilcoxon_signed_rank
from petcohort.engine.stats.roc import roc_auc
from petcohort.pipelines.tables import TABLES, build_outputs, collect
from petcohort.storage.store import CohortStore

_count = itertools.count()
TRUTH = ["PMR", "SMD", "CMR", "PMD", "PMR", "PMD", "SMD", "PMR"]


def _study(sul, tlg, reason=None):
    d = {"lesion_count": 2, "mtv_ml": tlg / 4.0, "tlg": tlg, "suvmax": sul * 1.3, "suvmean": sul / 2,
         "sulpeak": sul, "local_peak": sul, "suvpeak": sul * 1.2, "pbi": 0.01, "pli": None, "pli_reason": "NO_LIVER_MASK",
         "dmax_mm": 40.0, "kernel_voxels": 33, "kernel_ml": 1.0}
    if reason:
        d.update(sulpeak=None, sulpeak_reason=reason)
    return d


def _lesions(n):
    return [{"lesion": i + 1, "voxels": 10, "mtv_ml": 1.0, "suvmax": 5.0, "suvmean": 3.0, "sulpeak": 4.0,
             "suvpeak": 4.5, "local_peak": 4.0, "tlg": 3.0, "centroid_mm": [1.0, 2.0, 3.0], "organ": "bone"}
            for i in range(n)]


def _eval(rng, dice):
    return {"dice": dice, "intersect": 80, "truth_voxels": 100, "pred_voxels": 90, "tp": 2, "fn": 1, "tp_pred": 2,
            "fp": 1, "recall": 2 / 3, "precision": 2 / 3, "fp_volume_ml": 1.5, "fn_volume_ml": 0.5}


def _commit(store, key, stage, summary):
    store.commit_stage(key, stage, arrays={}, record={"summary": summary})


@pytest.fixture()
def store():
    s = CohortStore.create(f"memory://tables-{uuid.uuid4().hex}")
    rng = np.random.default_rng(0)
    for p, truth in enumerate(TRUTH):
        patient = f"P-{p:010x}"
        bl_sul = 5.0 + p
        fu_factor = {"CMR": 0.3, "PMR": 0.55, "SMD": 0.95, "PMD": 1.5}[truth]
        for tp in (0, 1):
            key = f"{patient}-T{tp}"
            attrs = {"patient": patient, "study": key, "timepoint": tp, "days_since_baseline": 60 * tp,
                     "site": f"site{p % 2}", "scanner": "S", "truth": {"percist": truth if tp else None}}
            s.add_study(key, attrs)
            sul = bl_sul * (fu_factor if tp else 1.0)
            tlg = 100.0 * (fu_factor ** 1.5 if tp else 1.0) + p
            sources = {"manual": _study(sul, tlg), "nnunet_bl": _study(sul * 1.05 + 0.1 * p, tlg * 0.9),
                       "nnunet_fu": _study(sul * 0.97, tlg * 1.1, reason="SUL_UNAVAILABLE" if p == 0 else None)}
            if p == 1 and tp == 0:
                sources["manual"]["tlg"] = 0.0  # baseline zero -> DELTA_BASELINE_ZERO
            _commit(s, key, "quantify", {"sources": sources, "lesions": {k: _lesions(2) for k in sources}})
            _commit(s, key, "evaluate", {"sources": {
                "nnunet_bl": _eval(rng, float(rng.uniform(0.6, 0.8))),
                "nnunet_fu": _eval(rng, None if (p == 2 and tp) else float(rng.uniform(0.7, 0.9)))}})
            if tp:
                call = {"category": truth, "reason": None, "rule": "otherwise", "qc_flags": ["UPTAKE_TIME"],
                        "evidence": {"sulpeak_change_pct": -40.0, "reference": {"kind": "liver", "mean": 1.1},
                                     "lesions": [1, 2]}}
                auto = dict(call, category=TRUTH[(p + 1) % len(TRUTH)] if p % 3 == 0 else truth)
                _commit(s, key, "percist", {"sources": {"manual": call, "nnunet_fu": auto}})
                _commit(s, key, "track", {"sources": {"manual": {"matches": [
                    {"baseline_lesion": 1, "followup_lesion": 1, "status": "persisting", "distance_mm": 2.0},
                    {"baseline_lesion": 2, "followup_lesion": None, "status": "vanished", "distance_mm": None},
                    {"baseline_lesion": None, "followup_lesion": 2, "status": "new", "distance_mm": None}]},
                    "nnunet_fu": {"baseline_source": "nnunet_bl", "matches": [
                        {"baseline_lesion": 1, "followup_lesion": 1, "status": "split", "distance_mm": 1.0},
                        {"baseline_lesion": 1, "followup_lesion": 2, "status": "split", "distance_mm": 3.0}]}}})
    s.fail_stage("P-0000000000-T0", "organs", record={"reason": "ORGAN_FAILED"})
    return s


def test_build_outputs_writes_every_table(store, tmp_path):
    paths = build_outputs(store, tmp_path)
    for name in TABLES:
        assert paths[name].exists() and paths[name].with_suffix(".csv").exists()
        pd.read_parquet(paths[name])
    notes = json.loads(paths["notes"].read_text())
    assert "1 failed organs record(s) left out" in notes["stages"]
    ds = xr.open_zarr(paths["results"], consolidated=False).load()
    assert ds.sizes == {"study": 16, "source": 3}
    assert set(ds.coords) >= {"patient", "timepoint", "site", "scanner", "days"}
    assert ds["sulpeak"].sel(study="P-0000000003-T0", source="manual").item() == 8.0
    assert np.isnan(ds["sulpeak"].sel(study="P-0000000000-T1", source="nnunet_fu").item())
    assert ds["percist_category"].sel(study="P-0000000002-T1", source="manual").item() == "CMR"


def test_studies_lesions_percist(store):
    out = collect(store)
    f = out.frames
    assert len(f["studies"]) == 16 * 3
    row = f["studies"].query("study == 'P-0000000000-T1' and source == 'nnunet_fu'").iloc[0]
    assert pd.isna(row.sulpeak) and row.sulpeak_reason == "SUL_UNAVAILABLE"
    les = f["lesions"]
    assert len(les) == 16 * 3 * 2 and {"centroid_z_mm", "centroid_x_mm"} <= set(les.columns)
    fu = les.query("study == 'P-0000000001-T1' and source == 'manual'").set_index("lesion")
    assert fu.loc[1, "track_status"] == "persisting" and fu.loc[2, "track_status"] == "new"
    bl = les.query("study == 'P-0000000001-T0' and source == 'manual'").set_index("lesion")
    assert bl.loc[2, "track_status"] == "vanished" and bl.loc[2, "track_partner_study"] == "P-0000000001-T1"
    split = les.query("study == 'P-0000000001-T0' and source == 'nnunet_bl'").set_index("lesion")
    assert split.loc[1, "track_status"] == "split" and split.loc[1, "track_partner"] == "1;2"
    pc = f["percist"]
    assert len(pc) == 16 and pc["evidence.reference.mean"].iloc[0] == 1.1
    assert pc["qc_flags"].iloc[0] == "UPTAKE_TIME" and pc["evidence.lesions"].iloc[0] == "[1, 2]"
    conf = f["percist_confusion"].set_index(["source", "truth", "call"])["count"]
    assert conf.xs("manual").sum() == 8 and conf[("manual", "PMR", "PMR")] == 3
    assert conf[("nnunet_fu", "PMR", "SMD")] == 1  # patient 0 (truth PMR) called as TRUTH[1]


def test_segmentation_tables(store):
    f = collect(store).frames
    seg = f["segmentation"].set_index(["source", "acquisitions"])
    r = seg.loc[("nnunet_fu", "follow-up")]
    assert r.n == 7 and r.n_dice_missing == 1
    assert r.global_dice == pytest.approx(2 * 80 * 8 / (100 * 8 + 90 * 8))
    assert r.recall == pytest.approx(2 / 3) and r.fp_volume_ml == 1.5
    paired = f["segmentation_paired"].iloc[0]
    assert (paired.source_a, paired.source_b, paired.n) == ("nnunet_bl", "nnunet_fu", 7)
    evals = {k: v for (k, st), v in store.stage_records().items() if st == "evaluate" and k.endswith("T1")}
    a = [v["summary"]["sources"]["nnunet_bl"]["dice"] for k, v in sorted(evals.items())]
    b = [v["summary"]["sources"]["nnunet_fu"]["dice"] for k, v in sorted(evals.items())]
    keep = [i for i in range(8) if b[i] is not None]
    ref = wilcoxon_signed_rank(np.array(a)[keep], np.array(b, dtype=float)[keep])
    assert paired.wilcoxon_p == pytest.approx(ref.p)
    assert paired.mean_difference == pytest.approx(np.mean(np.array(a)[keep] - np.array(b, dtype=float)[keep]))


def test_agreement_table(store):
    f = collect(store).frames
    ag = f["agreement"].set_index(["biomarker", "source", "acquisitions"])
    r = ag.loc[("sulpeak", "nnunet_bl", "all")]
    st = f["studies"]
    x = st[st.source == "nnunet_bl"].set_index("study").sulpeak
    y = st[st.source == "manual"].set_index("study").sulpeak
    assert r.n == 16 and r.ccc == pytest.approx(lins_ccc(x, y.reindex(x.index)).ccc)
    assert ag.loc[("sulpeak", "nnunet_fu", "all"), "n_missing"] == 2
    assert ag.loc[("pbi", "nnunet_bl", "all"), "reason"].startswith("ccc:STATS_CONSTANT")


def test_response_and_delong(store):
    out = collect(store)
    rt = out.frames["response"].set_index(["source", "biomarker"])
    r = rt.loc[("manual", "sulpeak")]
    assert r.label_source == "percist:manual" and r.n == 8 and r.auc == 1.0
    assert r.cutoff_percent < 0 and r.direction.startswith("decrease")
    assert rt.loc[("manual", "tlg"), "n_missing"] == 1  # baseline TLG 0
    assert any("DELTA_BASELINE_ZERO" in n for n in out.notes["response"])
    comp = rt.loc[("nnunet_bl+fu", "sulpeak")]  # nnunet_bl on baselines, nnunet_fu on follow-ups
    assert comp.n == 7
    assert "pli" in rt.loc["manual"].index and rt.loc[("manual", "pli"), "reason"] == "STATS_TOO_FEW"
    dl = out.frames["delong"]
    assert {"source", "label_source", "biomarker_a", "biomarker_b", "z", "p", "reason"} <= set(dl.columns)
    # the cohort accessor gives the same deltas and labels
    ds = out.dataset
    d = ds.cohort.deltas("sulpeak", "manual")
    y = ds.cohort.responders("manual")
    assert y.attrs["label_source"] == "percist:manual" and int(y.sum()) == 4
    assert roc_auc(y.values, -d.values) == 1.0
    tlg = ds.cohort.deltas("tlg", "manual")
    assert tlg.attrs["missing"] == {"DELTA_BASELINE_ZERO": 1}
    site = ds.cohort.per_site("sulpeak", "manual", delta=True)
    assert list(site.index) == ["site0", "site1"] and site["n"].sum() == 8


def test_labels_fall_back_to_truth_and_empty_store(tmp_path):
    s = CohortStore.create(f"memory://tables-{uuid.uuid4().hex}")
    paths = build_outputs(s, tmp_path / "empty")  # no studies at all: every table, no crash
    assert all(paths[n].exists() for n in TABLES)
    for p, truth in enumerate(["PMR", "SMD", "PMD"]):
        for tp in (0, 1):
            key = f"P-{p:010x}-T{tp}"
            s.add_study(key, {"patient": f"P-{p:010x}", "timepoint": tp, "site": "A", "scanner": "S",
                              "truth": {"percist": truth if tp else None}})
            _commit(s, key, "quantify", {"sources": {"manual": _study(4.0 - tp * p, 50.0)}, "lesions": {}})
    out = collect(s)
    rt = out.frames["response"]
    assert set(rt.label_source) == {"truth"} and (rt.n == 3).any()
    assert out.frames["segmentation"].empty and "segmentation" in out.notes
    assert out.frames["agreement"].empty
    assert out.dataset.cohort.responders().attrs["label_source"] == "truth"
    build_outputs(s, tmp_path / "small")
