"""Cohort report: sections, figures, missing-data behaviour, QC MIPs, size bound."""
from __future__ import annotations

import base64
import re
import time

import numpy as np
import pandas as pd
import pytest

from petcohort.engine.errors import InputError
from petcohort.pipelines.config import RunConfig
from petcohort.pipelines.stage_qc import coronal_mip, pet_mip_uint8, qc_stage
from petcohort.pipelines.stages import StageContext
from petcohort.storage.store import CohortStore

# Reference PERCIST calls of the hand-made follow-ups: patients 0, 2, 4 respond.
_CALLS = ("PMR", "PMD", "CMR", "SMD", "PMR", "PMD")


def _volumes(rng: np.random.Generator, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pet = rng.uniform(0.5, 1.5, (12, 8, 10)).astype(np.float32)
    pet[8:11, 3:5, 2:5] = 6.0 * scale  # lesion; rows 8-10 = cranial after the flip
    manual = np.zeros(pet.shape, np.uint8)
    manual[8:11, 3:5, 2:5] = 1
    auto = manual.copy()
    auto[8, 3, 2] = 0
    return pet, manual, auto


def make_store(url, *, patients: int = 6, identifiers: tuple[str, ...] = (), broken: bool = True,
               records: bool = True) -> CohortStore:
    """A tiny hand-made store: baseline + one follow-up per patient, quantify/qc records, one failure.

    ``records=False`` writes only studies and arrays (for a real run to process).
    """
    store = CohortStore.create(url)
    rng = np.random.default_rng(0)
    ids = list(identifiers) + [f"SYN-{i:04d}" for i in range(patients - len(identifiers))]
    for i, raw in enumerate(ids):
        patient = store.pseudonym(raw)
        for tp in (0, 1):
            key = f"{patient}-T{tp}"
            responder = _CALLS[i % len(_CALLS)] in ("PMR", "CMR")
            scale = 1.0 if tp == 0 else (0.4 if responder else 1.3)
            pet, manual, auto = _volumes(rng, scale)
            attrs = {"patient": patient, "study": key, "timepoint": tp, "days_since_baseline": 0 if tp == 0 else 90,
                     "site": f"site{i % 2}", "scanner": f"scanner{i % 3}", "spacing": [4.0, 4.0, 2.0],
                     "origin": [0.0, 0.0, 0.0], "sul_per_suvbw": 0.8, "sul_reason": None, "source": "synthetic",
                     "suv": {"units": "BQML", "decay_correction": "START", "reference_rule": "series_time",
                             "bw_factor": 1e-4, "lbm_factor": 8e-5, "overrides": []},
                     "truth": {"percist": _CALLS[i % len(_CALLS)] if tp else None, "lesions": []}}
            store.add_study(key, attrs)
            store.write_arrays(key, {"pet": pet, "seg/manual": manual, "seg/threshold_41pct": auto})
            if not records:
                continue
            sources = {}
            for src, mask in (("manual", manual), ("threshold_41pct", auto)):
                vals = pet[mask > 0]
                mtv = mask.sum() * 0.032
                sources[src] = {"sulpeak": float(vals.max() * 0.8), "tlg": float(mtv * vals.mean()),
                                "pbi": float(mask.sum() / 960.0), "pli": float(mask.sum() / 480.0)}
            store.commit_stage(key, "quantify", arrays={}, record={"summary": {"sources": sources}})
            ctx = StageContext(store=store, key=key, attrs=attrs, config=RunConfig())
            out = qc_stage(ctx)
            store.commit_stage(key, "qc", arrays=out.arrays, record={"summary": out.summary})
    if broken and records:
        key = store.study_keys()[0]
        store.fail_stage(key, "threshold", record={"reason": "ORGAN_MASK_EMPTY", "message": "liver mask is empty"})
    return store


def test_coronal_mip_orientation_and_window():
    vol = np.zeros((3, 2, 2), np.float32)
    vol[2, 1, 0] = 20.0  # most cranial slice (largest Z) -> row 0 after the flip
    vol[0, 0, 1] = 5.0
    mip = pet_mip_uint8(vol)
    assert mip.shape == (3, 2) and mip.dtype == np.uint8
    assert mip[0, 0] == 255 and mip[2, 1] == 128 and mip[1].max() == 0
    assert coronal_mip(vol)[0, 0] == 20.0


def test_qc_rejects_bad_input():
    with pytest.raises(InputError) as exc:
        pet_mip_uint8(np.zeros((3, 3)))
    assert exc.value.reason == "NOT_3D"
    with pytest.raises(InputError) as exc:
        pet_mip_uint8(np.full((2, 2, 2), np.nan))
    assert exc.value.reason == "IMAGE_NOT_FINITE"


def test_qc_stage_registered():
    from petcohort.pipelines.stages import load_stages

    stage = load_stages()["qc"]
    assert stage.applies_to == "all" and stage.requires == ("threshold",) and not stage.gpu


def test_qc_stage_outputs(tmp_path):
    store = make_store(tmp_path / "s.zarr", patients=1, broken=False)
    key = store.study_keys()[0]
    names = store.array_names(key)
    assert {"qc/mip_pet", "qc/mip_manual", "qc/mip_threshold_41pct"} <= set(names)
    mip = store.read_array(key, "qc/mip_manual")
    assert mip.shape == (12, 10) and mip.dtype == np.uint8
    # the lesion sat at Z 8-10 -> rows 1-3 after the head-up flip
    assert mip[1:4, 2:5].all() and mip[4:].sum() == 0
    rec = store.stage_record(key, "qc")
    assert rec["summary"]["mip_spacing_mm"] == [4.0, 2.0] and rec["summary"]["mip_shape"] == [12, 10]


def _sections(html: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="([^"]+)" data-section="[^"]+" data-status="(ok|partial|missing)"', html))


def test_report_sections_and_figures(tmp_path):
    from petcohort.pipelines.report import write_report

    store = make_store(tmp_path / "s.zarr")
    path = write_report(store.url, tmp_path / "out")
    html = path.read_text()
    status = _sections(html)
    for sid in ("summary", "fig-mips", "fig-agreement", "fig-roc", "fig-trajectories", "table-suv-provenance"):
        assert status.get(sid) == "ok", (sid, status)
    for fig in ("agreement-scatter", "roc-curves", "trajectories"):
        assert f'data-figure="{fig}"' in html
    assert html.count('data-figure="mip-P-') == 6
    assert "ORGAN_MASK_EMPTY" in html and 'data-table="failures"' in html
    assert "Lin&#x27;s CCC" in html and "Spearman" in html and "AUC" in html
    # self-contained: no external resources or scripts
    assert not re.search(r'(src|href)="(https?:)?//', html) and "<script" not in html
    for uri in re.findall(r'src="data:image/png;base64,([^"]+)"', html)[:3]:
        assert base64.b64decode(uri)[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_renders_when_nothing_computed(tmp_path):
    from petcohort.pipelines.report import write_report

    store = CohortStore.create(tmp_path / "empty.zarr")
    html = write_report(store.url, tmp_path / "out").read_text()
    status = _sections(html)
    assert status["summary"] == "partial" and "The store holds no studies." in html
    assert status["fig-roc"] == "missing" and status["fig-mips"] == "missing"
    assert "data-missing=\"fig-agreement\"" in html


def test_report_baselines_only_says_no_followup(tmp_path):
    from petcohort.pipelines.report import render_report

    store = make_store(tmp_path / "s.zarr", patients=3, broken=False)
    for key in store.study_keys():
        if key.endswith("-T1"):
            store.update_study_attrs(key, {"timepoint": 0})  # every study a baseline: no follow-up
    html = render_report(CohortStore.open(store.url, mode="r"), {})
    assert _sections(html)["fig-trajectories"] == "missing"
    assert "No follow-up" in html


def _fake_tables(n_patients: int) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    rng = np.random.default_rng(1)
    rows, meta = [], []
    for p in range(n_patients):
        pk = f"P-{p:010x}"
        for tp in (0, 1):
            key = f"{pk}-T{tp}"
            meta.append({"study": key, "patient": pk, "timepoint": tp, "days": 90 * tp, "site": f"s{p % 4}",
                         "scanner": f"c{p % 6}", "truth_percist": (("PMR", "SMD")[p % 2] if tp else None)})
            base = rng.uniform(1, 10, 4)
            for src in ("manual", "nnunet_bl", "nnunet_fu"):
                vals = base * rng.normal(1, 0.1, 4) * (0.5 if (tp and p % 2 == 0) else 1.0)
                rows.append({"study": key, "source": src, **dict(zip(("sulpeak", "tlg", "pbi", "pli"), vals))})
    return {"studies": pd.DataFrame(rows)}, pd.DataFrame(meta)


def test_report_data_long_and_wide_agree():
    from petcohort.pipelines import report_data as rd

    tables, meta = _fake_tables(4)
    long = rd.biomarker_long(tables["studies"])
    wide = long.pivot(index="study", columns="source").sort_index(axis=1)
    wide.columns = [f"{b}_{s}" for b, s in wide.columns]
    again = rd.biomarker_long(wide.reset_index())
    merged = long.merge(again, on=["study", "source"], suffixes=("", "_w"))
    assert len(merged) == len(long) and np.allclose(merged["tlg"], merged["tlg_w"])
    assert rd.pick_auto_source(["manual", "nnunet_bl", "nnunet_fu"], 0) == "nnunet_bl"
    assert rd.pick_auto_source(["manual", "nnunet_bl", "nnunet_fu"], 1) == "nnunet_fu"
    assert rd.figure_source(["manual", "nnunet_bl", "nnunet_bl+fu"]) == "nnunet_bl+fu"
    assert rd.figure_source(["manual", "threshold_41pct"]) == "threshold_41pct"
    assert rd.figure_source(["manual"]) == "manual" and rd.figure_source([]) is None


def _cells(html: str, table_id: str) -> list[list[str]]:
    """The body cells of one HTML table of the report, row by row."""
    table = re.search(rf'<table id="{table_id}".*?</table>', html).group(0)
    return [re.findall(r"<td[^>]*>([^<]*)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", table)[1:]]


def test_report_numbers_are_the_tables_numbers(tmp_path):
    """Fig. 4 and Fig. 5 quote the agreement and response tables; their points are the tables' inputs."""
    from petcohort.engine.stats.roc import roc_auc
    from petcohort.pipelines import report_data as rd
    from petcohort.pipelines.report import write_report
    from petcohort.pipelines.report_html import fmt
    from petcohort.pipelines.tables import agreement_pairs

    store = make_store(tmp_path / "s.zarr")
    html = write_report(store.url, tmp_path / "out").read_text()
    tables = rd.load_tables(store, tmp_path / "out")
    ag, response, deltas = tables["agreement"], tables["response"], tables["deltas"]

    source, panels, rows, _ = rd.agreement_panels(ag, tables["studies"])
    assert source == "threshold_41pct" and [r["biomarker"] for r in rows] == ["SULpeak", "TLG", "PBI", "PLI"]
    for (b, label), panel, cells in zip(rd.BIOMARKERS, panels, _cells(html, "agreement_summary")):
        row = ag[(ag.biomarker == b) & (ag.source == source) & (ag.acquisitions == "all")].iloc[0]
        assert cells[:4] == [label, source, fmt(int(row.n)), fmt(float(row.ccc))]
        assert cells[4:6] == [fmt(float(row.ccc_ci_low)), fmt(float(row.ccc_ci_high))]
        assert f"Lin's CCC {row.ccc:.2f} [{row.ccc_ci_low:.2f}, {row.ccc_ci_high:.2f}]" in panel["title"]
        pair = agreement_pairs(tables["studies"], b, source).dropna()
        assert len(panel["x"]) == row.n == len(pair) == 12
        assert np.array_equal(panel["y"], pair[source].to_numpy(float))

    source, series, rows, notes = rd.roc_series(response, deltas)
    assert source == "threshold_41pct" and len(series) == 4 and not notes
    for (b, label), s, cells in zip(rd.BIOMARKERS, series, _cells(html, "roc_summary")):
        row = response[(response.source == source) & (response.biomarker == b)].iloc[0]
        assert s.label.startswith(f"\u0394{label} AUC {row.auc:.2f} [{row.auc_ci_low:.2f}, {row.auc_ci_high:.2f}]")
        assert (s.youden_fpr, s.youden_tpr) == (1.0 - row.specificity, row.sensitivity)
        assert cells[:4] == [f"\u0394{label}", source, fmt(int(row.n)), fmt(float(row.auc))]
        assert cells[6:9] == [fmt(float(row.cutoff_percent)), fmt(float(row.sensitivity)),
                              fmt(float(row.specificity))]
        # the drawn curve runs through the deltas the AUC was computed from
        d = deltas[(deltas.source == source) & deltas.responder.notna()][[f"delta_{b}", "responder"]].dropna()
        assert len(d) == row.n == 6
        assert roc_auc(d.responder.astype(bool), -d[f"delta_{b}"].astype(float)) == pytest.approx(row.auc, abs=1e-12)
        assert np.trapezoid(s.tpr, s.fpr) == pytest.approx(row.auc, abs=1e-12)


def test_deltas_table_is_what_table2_uses(tmp_path):
    from petcohort.engine.stats.response import delta_percent, responder_label
    from petcohort.pipelines.tables import collect

    store = make_store(tmp_path / "s.zarr", broken=False)
    frames = collect(store).frames
    d = frames["deltas"]
    assert set(d.source) == {"manual", "threshold_41pct"} and len(d) == 12
    studies = frames["studies"].set_index(["study", "source"])
    for r in d.itertuples(index=False):
        bl, fu = studies.loc[(r.baseline, r.source)], studies.loc[(r.study, r.source)]
        assert r.delta_tlg == delta_percent(bl.tlg, fu.tlg).value
        truth = store.study_attrs(r.study)["truth"]["percist"]
        assert r.responder == responder_label(truth) and r.label_source == "truth"
    n = frames["response"].set_index(["source", "biomarker"]).loc[("manual", "tlg"), "n"]
    assert n == d[(d.source == "manual")].delta_tlg.notna().sum()


def test_trajectories_are_100_plus_delta():
    from petcohort.pipelines import report_data as rd

    meta = pd.DataFrame({"study": ["A-T0", "A-T1", "A-T2"], "patient": ["A"] * 3, "timepoint": [0, 1, 2],
                         "days": [0, 60, 120], "site": "s", "scanner": "c", "truth_percist": None})
    deltas = pd.DataFrame({"study": ["A-T1", "A-T2"], "baseline": ["A-T0"] * 2, "source": "manual",
                           "label_source": "truth", "responder": [True, None], "delta_sulpeak": [-40.0, np.nan],
                           "delta_tlg": [10.0, -20.0]})
    source, lines, n = rd.trajectory_lines(deltas, meta, max_patients=10)
    assert source == "manual" and n == 1
    (x, y), = lines["sulpeak"]
    assert list(x) == [0.0, 60.0] and list(y) == [100.0, 60.0]  # the undefined delta is left out
    (x, y), = lines["tlg"]
    assert list(x) == [0.0, 60.0, 120.0] and list(y) == [100.0, 110.0, 80.0]


def test_composite_source_in_agreement_and_figures():
    from petcohort.pipelines import report_data as rd
    from petcohort.pipelines.tables import agreement_frame, agreement_pairs

    tables, meta = _fake_tables(6)
    studies = tables["studies"].merge(meta[["study", "timepoint"]], on="study")
    ag = agreement_frame(studies, {})
    assert "nnunet_bl+fu" in set(ag.source)
    pair = agreement_pairs(studies, "tlg", "nnunet_bl+fu")
    wide = studies.pivot(index="study", columns="source", values="tlg")
    tp = meta.set_index("study").timepoint.reindex(pair.index)
    expect = np.where(tp > 0, wide.loc[pair.index, "nnunet_fu"], wide.loc[pair.index, "nnunet_bl"])
    assert np.array_equal(pair["nnunet_bl+fu"].to_numpy(float), expect.astype(float))
    source, panels, rows, _ = rd.agreement_panels(ag, studies)
    assert source == "nnunet_bl+fu" and len(panels) == 4
    row = ag.query("biomarker == 'tlg' and source == 'nnunet_bl+fu' and acquisitions == 'all'").iloc[0]
    assert rows[1]["Lin's CCC"] == row.ccc and rows[1]["n"] == row.n == 12


def test_provenance_section(tmp_path):
    from petcohort.pipelines.report import write_report

    store = make_store(tmp_path / "s.zarr", patients=2, broken=False)
    key = store.study_keys()[0]
    rec = store.stage_record(key, "quantify")
    store.commit_stage(key, "quantify", arrays={}, record={"summary": rec["summary"], "run": "r1",
                                                           "params": {"radius_mm": 6.2035, "connectivity": 26},
                                                           "code": {"digest": "ab" * 32}})
    store.write_json("run_config", {"quantify": {"radius_mm": 6.2035, "connectivity": 26}})
    html = write_report(store.url, tmp_path / "out").read_text()
    assert _sections(html)["provenance"] == "ok"
    cfg = re.search(r'<pre data-provenance="run_config">(.*?)</pre>', html, re.S).group(1)
    assert "quantify:" in cfg and "radius_mm: 6.2035" in cfg
    rows = {c[0]: c for c in _cells(html, "stage_provenance")}
    assert rows["quantify"][1:4] == ["4", "4", "0"] and rows["quantify"][4] == "ab" * 8
    assert "&quot;radius_mm&quot;: 6.2035" in rows["quantify"][5]


def test_provenance_missing_and_accuracy_sections(tmp_path):
    from petcohort.pipelines.report import render_report

    store = CohortStore.create(tmp_path / "empty.zarr")
    acc = pd.DataFrame({"source": ["nnunet_fu"], "n": [8], "accuracy": [0.75]})
    html = render_report(store, {"tracking_accuracy": acc, "percist_accuracy": acc.iloc[:0]},
                         notes={"percist_accuracy": ["no designed responses"]})
    status = _sections(html)
    assert status["provenance"] == "missing" and "No run configuration recorded" in html
    assert status["table-tracking-accuracy"] == "ok" and 'data-table="tracking_accuracy"' in html
    assert status["table-percist-accuracy"] == "missing" and "no designed responses" in html


class FakeStore:
    """The store API the report reads, serving 1,000 studies from fake frames (no volumes on disk)."""

    def __init__(self, meta: pd.DataFrame):
        self.meta = meta.set_index("study")
        rng = np.random.default_rng(2)
        self.mip = rng.integers(0, 255, (160, 60), dtype=np.uint8)
        self.seg = (self.mip > 240).astype(np.uint8)

    def study_keys(self):
        return self.meta.index.tolist()

    def study_attrs(self, key):
        r = self.meta.loc[key]
        return {"patient": r.patient, "timepoint": int(r.timepoint), "days_since_baseline": int(r.days),
                "site": r.site, "scanner": r.scanner, "truth": {"percist": r.truth_percist},
                "suv": {"units": "BQML"}, "sul_per_suvbw": 0.8}

    def stage_records(self):
        return {(k, "qc"): self.stage_record(k, "qc") for k in self.meta.index}

    def stage_record(self, key, stage):
        return {"status": "committed", "summary": {"mip_spacing_mm": [4.0, 4.0]}}

    def has_array(self, key, name):
        return True

    def array_names(self, key):
        return ["pet", "qc/mip_manual", "qc/mip_nnunet_bl", "qc/mip_pet"]

    def read_array(self, key, name):
        return self.mip if name == "qc/mip_pet" else self.seg


def render_1000(tmp_path):
    """Write the 1,000-study (500 patients x 2) report; returns (path, seconds)."""
    from petcohort.pipelines.report import render_report

    tables, meta = _fake_tables(500)
    t0 = time.perf_counter()
    html = render_report(FakeStore(meta), tables)
    seconds = time.perf_counter() - t0
    path = tmp_path / "report.html"
    path.write_text(html, encoding="utf-8")
    return path, seconds


@pytest.mark.slow
def test_report_bounded_for_1000_studies(tmp_path):
    """Render the 1,000-study report from fake tables; measure time and size."""
    from petcohort.pipelines.report import MAX_MIP_PATIENTS

    path, seconds = render_1000(tmp_path)
    html = path.read_text()
    size_mb = path.stat().st_size / 1e6
    print(f"1000-study report: {seconds:.1f} s, {size_mb:.2f} MB")
    assert html.count('data-figure="mip-P-') == MAX_MIP_PATIENTS
    assert f"Showing {MAX_MIP_PATIENTS} of 500 patients" in html
    assert size_mb < 50


def test_empty_table_section_shows_the_tables_note(tmp_path):
    from petcohort.pipelines.report import render_report

    store = CohortStore.create(tmp_path / "empty.zarr")
    tables = {"delong": pd.DataFrame(columns=["biomarker_a", "biomarker_b", "p"]),
              "segmentation": pd.DataFrame({"source": ["nnunet_bl"], "mean_dice": [0.61]})}
    html = render_report(store, tables, notes={"delong": ["only one biomarker has deltas"],
                                               "segmentation": ["sd_dice uses ddof=1"]})
    status = _sections(html)
    assert status["table-delong"] == "missing" and "only one biomarker has deltas" in html
    assert status["table-segmentation"] == "ok" and "sd_dice uses ddof=1" in html and "0.61" in html
    assert status["table-percist"] == "missing" and "have not been computed" in html


def test_percist_confusion_as_matrix(tmp_path):
    from petcohort.pipelines.report import render_report

    store = CohortStore.create(tmp_path / "empty.zarr")
    conf = pd.DataFrame({"source": ["manual", "manual", "manual"], "truth": ["PMR", "PMR", "PMD"],
                         "call": ["PMR", "SMD", "PMD"], "count": [3, 1, 2]})
    html = render_report(store, {"percist_confusion": conf})
    table = re.search(r'<table id="percist_confusion_manual".*?</table>', html).group(0)
    cells = re.findall(r"<t[hd][^>]*>([^<]*)</t[hd]>", table)
    # columns in PERCIST order PMR, SMD, PMD; rows PMR, PMD
    assert cells == ["truth \\ call", "PMR", "SMD", "PMD", "PMR", "3", "1", "0", "PMD", "0", "0", "2"]
