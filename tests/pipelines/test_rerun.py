"""Trustworthy reruns: params and code fingerprints in records, exactly the stale study-stages redone.

The real stage registry is planned (its declared params, its modules' import
graph), but each stage function is replaced by a trivial one and the jobs are
executed in-process, in graph order: the tests are about *what* is redone,
not about the stages' numbers. Code edits are simulated on a copy of the
source index (:meth:`CodeIndex.with_source`), never on files.
"""
from __future__ import annotations

import dataclasses
import json
import textwrap

import pytest
import yaml
from typer.testing import CliRunner

import run_test_stages as rts
from petcohort.engine.errors import ConfigError
from petcohort.pipelines import run as run_mod
from petcohort.pipelines.cli import app
from petcohort.pipelines.config import RunConfig, load_config, to_yaml
from petcohort.pipelines.fingerprint import CodeIndex, model_files, stage_code
from petcohort.pipelines.run import plan_run, stale_study_stages
from petcohort.pipelines.run_task import execute_study_stage
from petcohort.pipelines.stages import MODEL_STAGES, STAGES, Stage, StageOutput, load_stages, stage_order

SULPEAK = "petcohort.engine.kernels.sulpeak"


def _noop(ctx):
    return StageOutput(summary={"ok": True})


@pytest.fixture(scope="module")
def index():
    return CodeIndex.from_package()


@pytest.fixture
def registry():
    load_stages()
    return {n: dataclasses.replace(s, fn=_noop) for n, s in STAGES.items() if n not in MODEL_STAGES}


@pytest.fixture
def names(registry):
    return [n for n in stage_order() if n in registry]


def _run(store, registry, names, *, config=None, code=None, token="tok0"):
    """Plan and execute in-process; returns the plan ((study, stage) redone = plan.why)."""
    plan = plan_run(store, registry, names, config=config or RunConfig(), force=False, token=token, code=code)
    for key in plan.graph.order:
        assert execute_study_stage(plan.jobs[key])["status"] == "committed"
    return plan


def _stages(plan) -> set[str]:
    return {stage for _, stage in plan.why}


@pytest.fixture
def store(tmp_path, registry, names, index):
    s = rts.make_cohort(tmp_path / "store", patients=2)
    first = _run(s, registry, names, code=index)
    assert _stages(first) == set(names)
    assert all(w == ("never run",) for w in first.why.values())
    return s


def _dependants(registry, names, seeds: set[str]) -> set[str]:
    out = set(seeds)
    for n in names:  # canonical order: requirements come first
        if set(registry[n].requires) & out or set(registry[n].needs_baseline) & out:
            out.add(n)
    return out


def test_unchanged_rerun_redoes_nothing(store, registry, names, index):
    assert _run(store, registry, names, code=index, token="tok1").why == {}


def test_a_later_phase_plans_from_the_refreshed_records_as_from_the_store(store, registry, names, index):
    """run_cohort plans its analysis phase from the records it read before the model phase, refreshed only
    for what that phase ran (``refresh_records``): the same plan as reading every record again."""
    from petcohort.pipelines.plan import refresh_records

    radius = RunConfig().params_for(["quantify.radius_mm"])["quantify.radius_mm"]
    config = RunConfig.from_dict({"quantify": {"radius_mm": radius * 0.9}})   # quantify and its dependants
    records = store.stage_records()
    first = ["organs", "threshold", "quantify"]
    plan = plan_run(store, registry, first, config=config, force=False, token="p1", code=index, records=records)
    assert {stage for _, stage in plan.why} == {"quantify"}
    for key in plan.graph.order:
        assert execute_study_stage(plan.jobs[key])["status"] == "committed"
    refresh_records(store, records, plan)
    assert records == store.stage_records()
    later = [n for n in names if n not in first]
    carried = plan_run(store, registry, later, config=config, force=False, token="p1", code=index, records=records)
    fresh = plan_run(store, registry, later, config=config, force=False, token="p1", code=index)
    assert carried.why == fresh.why and carried.skipped == fresh.skipped and carried.why
    assert {k: j.inputs for k, j in carried.jobs.items()} == {k: j.inputs for k, j in fresh.jobs.items()}


def test_records_hold_params_and_code(store, index):
    rec = store.stage_record("P-0000000000-T0", "quantify")
    assert rec["params"] == {"analysis.sources": None, "quantify.connectivity": 26, "quantify.radius_mm": 6.2035}
    code = rec["code"]
    assert code["modules"][SULPEAK] == index.digest(SULPEAK)
    assert "petcohort.pipelines.stage_quantify" in code["modules"]
    assert "petcohort.pipelines.report" not in code["modules"] and "petcohort.pipelines.stages" not in code["modules"]
    assert code["libraries"]["numpy"] and isinstance(code["digest"], str) and len(code["digest"]) == 16
    assert rec["inputs"]["study"] and set(rec["inputs"]) == {"study", "study/organs", "study/threshold"}
    organs = store.stage_record("P-0000000000-T0", "organs")
    assert organs["params"] == {} and SULPEAK not in organs["code"]["modules"]


def test_radius_change_in_run_yaml_redoes_quantify_and_dependants_only(store, registry, names, index, tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("quantify: {radius_mm: 6.0}\n")
    config = load_config(cfg_file)
    plan = _run(store, registry, names, config=config, code=index, token="tok1")
    readers = {n for n in names if "quantify.radius_mm" in registry[n].params}
    assert readers == {"quantify", "percist"}
    assert _stages(plan) == _dependants(registry, names, readers)
    assert all(any("params quantify.radius_mm: 6.2035 -> 6.0" in w for w in why) for why in plan.why.values())
    assert store.stage_record("P-0000000001-T1", "percist")["params"]["quantify.radius_mm"] == 6.0
    # and back: the records now hold 6.0, so the defaults make them stale again (nothing else)
    assert {s for r in stale_study_stages(store, config=RunConfig(), stages=names, code=index)
            for s in [r["stage"]]} == _stages(plan)


def test_kernel_edit_redoes_exactly_the_stages_importing_it(store, registry, names, index):
    edited = index.with_source(SULPEAK, index.sources[SULPEAK] + "\n# a fix\n")
    importing = {n for n in names if SULPEAK in stage_code(registry[n], RunConfig(), index)["modules"]}
    assert "quantify" in importing and not {"organs", "register", "threshold"} & importing
    plan = _run(store, registry, names, code=edited, token="tok1")
    assert _stages(plan) == _dependants(registry, names, importing)
    assert not {"organs", "register"} & _stages(plan)
    why = plan.why[("P-0000000000-T0", "quantify")]
    assert why == (f"code: module {SULPEAK} changed",)


@pytest.mark.parametrize("module", ["petcohort.pipelines.report", "petcohort.pipelines.tables",
                                    "petcohort.pipelines.config", "petcohort.pipelines.config_checks",
                                    "petcohort.engine.errors"])
def test_report_tables_and_config_edits_redo_nothing(store, registry, names, index, module):
    edited = index.with_source(module, index.sources[module] + "\n# edited\n")
    assert plan_run(store, registry, names, config=RunConfig(), force=False, token="t", code=edited).why == {}


def test_changed_input_names_the_input(store, registry, names, index):
    import numpy as np

    store.write_arrays("P-0000000000-T1", {"ct": np.zeros((6, 12, 12), np.int16)})
    rows = stale_study_stages(store, config=RunConfig(), stages=names, code=index)
    assert {r["study"] for r in rows} == {"P-0000000000-T1"}
    organs = next(r for r in rows if r["stage"] == "organs")
    assert organs["why"] == ["input study attrs or input arrays changed"]
    quantify = next(r for r in rows if r["stage"] == "quantify")
    assert "input study/organs is redone in this run" in quantify["why"]


def test_legacy_records_are_stale_with_a_reason(store, registry, names, index):
    key = "P-0000000000-T0"
    old = store.stage_record(key, "threshold")
    legacy = {k: old[k] for k in ("input_hash", "started", "run", "summary")}
    store.commit_stage(key, "threshold", arrays={}, record={**legacy, "config_hash": "abc", "code_version": "0.1.0"})
    rows = {(r["study"], r["stage"]): r["why"] for r in stale_study_stages(store, config=RunConfig(), stages=names,
                                                                            code=index)}
    assert "petcohort 0.1.0 holds no params/code" in rows[(key, "threshold")][0]
    assert rows[(key, "quantify")] == ["input study/threshold is redone in this run"]
    assert (key, "organs") not in rows


def test_model_stage_fingerprint_hashes_the_checkpoints(tmp_path):
    load_stages()
    folder = tmp_path / "Dataset501_X" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    for name in ("dataset.json", "plans.json", "fold_0/checkpoint_final.pth", "fold_1/checkpoint_final.pth"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(name.encode())
    files = model_files(folder, (1,))
    assert sorted(files) == ["dataset.json", "fold_1/checkpoint_final.pth", "plans.json"]
    code = stage_code(STAGES["segment_bl"], RunConfig(segment={"model_bl": str(folder)}), CodeIndex.from_package())
    assert sorted(code["models"]) == ["model_bl/dataset.json", "model_bl/fold_0/checkpoint_final.pth",
                                      "model_bl/fold_1/checkpoint_final.pth", "model_bl/plans.json"]
    assert {"torch", "nnunetv2"} <= set(code["libraries"])
    assert str(tmp_path) not in json.dumps(code)  # relative names only



def test_stage_defined_in_a_script_or_a_notebook_is_fingerprinted(tmp_path, monkeypatch):
    """A stage registered by ``python script.py`` (module ``__main__``, no import spec) or in a notebook (no file)."""
    import subprocess
    import sys
    import types

    script = tmp_path / "my_stage.py"
    script.write_text(textwrap.dedent("""
        import json
        import scipy.ndimage
        from petcohort.pipelines.config import RunConfig
        from petcohort.pipelines.fingerprint import CodeIndex, stage_code
        from petcohort.pipelines.stages import STAGES, StageOutput, register_stage

        @register_stage("my_script_stage")
        def my_script_stage(ctx):
            return StageOutput(summary={})

        code = stage_code(STAGES["my_script_stage"], RunConfig(), CodeIndex.from_package())
        print(json.dumps(code))
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=True)
    code = json.loads(out.stdout.strip().splitlines()[-1])
    assert "__main__" in code["modules"] and "scipy" in code["libraries"]

    notebook = types.ModuleType("notebook_cell")           # no __file__, no spec: the function's source
    monkeypatch.setitem(sys.modules, "notebook_cell", notebook)

    def cell_stage(ctx):
        return StageOutput(summary={})

    cell_stage.__module__ = "notebook_cell"
    code = stage_code(Stage("cell", cell_stage), RunConfig(), CodeIndex.from_package())
    assert "notebook_cell" in code["modules"] and len(code["digest"]) == 16

# -- configuration ---------------------------------------------------------------------------
@pytest.mark.parametrize("text, key", [
    ("quantify: {raduis_mm: 6.0}", "quantify.raduis_mm"),
    ("quantfy: {radius_mm: 6.0}", "quantfy"),
    ("quantify: {radius_mm: 0}", "quantify.radius_mm"),
    ("quantify: {radius_mm: six}", "quantify.radius_mm"),
    ("quantify: {connectivity: 5}", "quantify.connectivity"),
    ("suv: {clip: -1}", "suv.clip"),
    ("evaluate: {overlap: 1.5}", "evaluate.overlap"),
    ("segment: {model_bl: /no/such/model/folder}", "segment.model_bl"),
    ("segment: {tta: maybe}", "segment.tta"),
])
def test_bad_run_yaml_fails_once_before_the_cluster_starts(tmp_path, monkeypatch, text, key):
    store = rts.make_cohort(tmp_path / "store", patients=1)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(text + "\n")

    def never(*a, **k):
        raise AssertionError("run_cohort must not be called with a bad configuration")

    monkeypatch.setattr(run_mod, "run_cohort", never)
    result = CliRunner().invoke(app, ["run", "--store", store.url, "--config", str(cfg)])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and key in errors[0]
    assert any(f"[{c}]" in errors[0] for c in ("CONFIG_UNKNOWN_FIELD", "BAD_VALUE", "BAD_TYPE"))
    assert store.stage_records() == {} and store.read_json("run") is None
    with pytest.raises(ConfigError):
        load_config(cfg)


def test_flags_override_the_file(tmp_path, monkeypatch):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("segment: {tta: true, tile_step: 0.25}\nquantify: {radius_mm: 6.0}\n")
    seen = {}

    def capture(store, **kwargs):
        seen.update(kwargs)
        return run_mod.RunSummary()

    monkeypatch.setattr(run_mod, "run_cohort", capture)
    result = CliRunner().invoke(app, ["run", "--store", "s", "--config", str(cfg), "--no-tta",
                                      "--set", "quantify.radius_mm=5.5", "--folds", "0,2"])
    assert result.exit_code == 0, result.output
    c = seen["config"]
    assert (c.segment.tta, c.segment.tile_step, c.radius_mm, c.segment.folds) == (False, 0.25, 5.5, (0, 2))


def test_config_show_parses_back(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("percist: {sphere_mm: 25, liver_tolerance: [0.1, 0.2]}\nanalysis: {sources: [manual]}\n")
    result = CliRunner().invoke(app, ["config", "show", "--config", str(cfg), "--set", "tracking.overlap_min=0.2"])
    assert result.exit_code == 0, result.output
    shown = RunConfig.from_dict(yaml.safe_load(result.output))
    expected = load_config(cfg, {"tracking.overlap_min": 0.2})
    assert shown == expected and shown.percist.sphere_mm == 25.0 and shown.sources == ("manual",)
    assert yaml.safe_load(to_yaml(RunConfig())) == RunConfig().to_dict()
    default = CliRunner().invoke(app, ["config", "show"])
    assert RunConfig.from_dict(yaml.safe_load(default.output)) == RunConfig()
    assert yaml.safe_load(default.output)["quantify"]["radius_mm"] == pytest.approx(6.2035)


def test_former_flat_config_still_works():
    c = RunConfig(radius_mm=6, connectivity=18, sources=("a",), extra={"tta": False, "registration_seed": 3,
                                                                       "sleep_s": 0.1})
    assert (c.quantify.radius_mm, c.connectivity, c.analysis.sources, c.segment.tta, c.registration.seed) == \
        (6.0, 18, ("a",), False, 3)
    assert c.extra["sleep_s"] == 0.1 and "sleep_s" not in json.dumps(c.to_dict())
    assert "radius_mm" in STAGES["quantify"].params and "quantify.radius_mm" in STAGES["quantify"].params
    with pytest.raises(ConfigError) as exc:
        RunConfig(radius=6)
    assert exc.value.reason == "CONFIG_UNKNOWN_FIELD"


def test_manifest_why_cli_and_provenance_table(store, names, index):
    result = CliRunner().invoke(app, ["manifest", "--store", store.url, "--why", "--set", "evaluate.overlap=0.3",
                                      "--stages", ",".join(names)])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 4 and all(" evaluate: params evaluate.overlap: 0.5 -> 0.3" in line for line in lines)
    clean = CliRunner().invoke(app, ["manifest", "--store", store.url, "--why", "--stages", ",".join(names)])
    assert "every study-stage is up to date" in clean.output

    from petcohort.pipelines.tables import collect

    tables = collect(store)
    prov = tables.frames["provenance"]
    assert len(prov) == len(store.stage_records()) and prov["code_hash"].notna().all()
    row = prov[(prov.study == "P-0000000000-T0") & (prov.stage == "quantify")].iloc[0]
    assert json.loads(row["params"])["quantify.radius_mm"] == 6.2035 and row["run"] == "tok0"
    assert "quantify" in json.loads(tables.dataset.attrs["stage_params"])


def test_params_name_model_folders_not_paths(tmp_path):
    """A record holds a model folder's last two names and a fold map's content hash, never a path.

    A store planned on another machine (models elsewhere) is not redone, and no user folder name is recorded;
    a changed fold map changes the params.
    """
    load_stages()
    keys = ("segment.model_bl", "segment.fold_map")
    got = []
    for where in ("alice", "cluster/jobs"):
        folder = tmp_path / where / "Dataset501_X" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
        folder.mkdir(parents=True)
        fold_map = tmp_path / where / "folds.json"
        fold_map.write_text('{"P-1": 0}')
        params = RunConfig(segment={"model_bl": str(folder), "fold_map": str(fold_map)}).params_for(keys)
        assert str(tmp_path) not in json.dumps(params) and "alice" not in json.dumps(params)
        got.append(params)
    assert got[0] == got[1]
    assert got[0]["segment.model_bl"] == "Dataset501_X/nnUNetTrainer__nnUNetPlans__3d_fullres"
    (tmp_path / "alice" / "folds.json").write_text('{"P-1": 1}')
    changed = RunConfig(segment={"model_bl": str(tmp_path / "alice" / "Dataset501_X" /
                                                  "nnUNetTrainer__nnUNetPlans__3d_fullres"),
                                 "fold_map": str(tmp_path / "alice" / "folds.json")}).params_for(keys)
    assert changed["segment.fold_map"] != got[0]["segment.fold_map"]
    assert changed["segment.fold_map"].startswith("folds.json sha256:")
