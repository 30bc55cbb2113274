"""The ``petcohort`` command (typer). Each command parses its options once and
hands them to one function in ``pipelines/``; heavy imports stay lazy so
``petcohort --help`` is instant."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from petcohort.engine.errors import PetCohortError

app = typer.Typer(
    name="petcohort",
    help="Cohort analytics for longitudinal whole-body FDG PET/CT (synthetic cohort, SUV/SUL, "
    "SULpeak/TLG/PBI/PLI, evaluation, response, PERCIST, report, dashboard).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

log = logging.getLogger("petcohort")


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _fail(exc: PetCohortError, code: int = 2) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code)


def _overrides(weight: Optional[float], height: Optional[float], sex: Optional[str],
               dose: Optional[float], injection_time: Optional[str]) -> dict:
    out = {"weight_kg": weight, "height_m": height, "sex": sex, "dose_bq": dose,
           "injection_datetime": injection_time}
    return {k: v for k, v in out.items() if v is not None}


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", help="Output: the cohort store (store), or a folder (dicom/nifti)."),
    patients: int = typer.Option(12, "--patients", help="Number of patients."),
    sites: int = typer.Option(2, "--sites", help="Number of sites (1-2; each has two scanners)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: same seed, same bytes."),
    fmt: str = typer.Option("store", "--format", help="store | dicom | nifti"),
    voxel_mm: Optional[float] = typer.Option(None, "--voxel-mm",
                                             help="Force an isotropic PET voxel size (mm) for every scanner."),
    fov_scale: float = typer.Option(1.0, "--fov-scale", help="Scale of the body (1 = adult whole body)."),
) -> None:
    """Generate a deterministic synthetic multi-site longitudinal PET/CT cohort."""
    _setup_logging()
    from petcohort.pipelines.synthetic import synthesize

    try:
        summary = synthesize(out, patients=patients, sites=sites, seed=seed, fmt=fmt,
                             voxel_mm=voxel_mm, fov_scale=fov_scale)
    except PetCohortError as exc:
        _fail(exc)
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command()
def ingest(
    src: Path = typer.Argument(..., help="A DICOM tree, NIfTI/autoPET folder."),
    store: str = typer.Option(..., "--store", help="Cohort store path or URL (created if missing)."),
    weight: Optional[float] = typer.Option(None, "--weight", help="Override patient weight (kg)."),
    height: Optional[float] = typer.Option(None, "--height", help="Override patient height (m)."),
    sex: Optional[str] = typer.Option(None, "--sex", help="Override patient sex (F/M/O)."),
    dose: Optional[float] = typer.Option(None, "--dose", help="Override injected dose (Bq)."),
    injection_time: Optional[str] = typer.Option(None, "--injection-time",
                                                 help="Override injection date-time (ISO 8601)."),
    pet_series: Optional[str] = typer.Option(
        None, "--pet-series", help="Regex on SeriesDescription choosing among several attenuation-corrected PET "
        "series of a study (NAC series are never used)."),
    ct_series: Optional[str] = typer.Option(
        None, "--ct-series", help="Regex on SeriesDescription choosing among several CT series sharing the PET's "
        "frame of reference."),
    mask_label: Optional[str] = typer.Option(
        None, "--mask-label", help="Regex on DICOM SEG SegmentLabel / RTSTRUCT ROIName selecting the lesion "
        "segments (default: segments coded or named as lesions)."),
    mask_kind: Optional[str] = typer.Option(
        None, "--mask-kind", help="SEG | RTSTRUCT: take lesions only from mask objects of this kind (an archive "
        "holding one annotation in both forms)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Run configuration (YAML); ingest uses its suv "
                                          "section (suv.lbm, suv.always_backcompute)."),
    sets: Optional[list[str]] = typer.Option(None, "--set", help="Override one configuration key, e.g. --set "
                                             "suv.lbm=james (repeatable; wins over --config)."),
) -> None:
    """Ingest DICOM PET/CT (with SEG/RTSTRUCT masks) or NIfTI studies; bad studies are recorded, others go on."""
    _setup_logging()
    from petcohort.pipelines.ingest import ingest_tree

    try:
        suv_config = _run_config(config, sets, {}).suv   # a bad configuration fails here, before any study
        report = ingest_tree(src, store, overrides=_overrides(weight, height, sex, dose, injection_time),
                             pet_series=pet_series, ct_series=ct_series, mask_label=mask_label,
                             mask_kind=mask_kind, suv=suv_config)
    except PetCohortError as exc:
        _fail(exc)
    typer.echo(json.dumps(report, indent=2, default=str))
    if report.get("failed"):
        raise typer.Exit(1)


@app.command()
def suv(
    dicom_dir: Path = typer.Argument(..., help="Folder holding one PET series."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    weight: Optional[float] = typer.Option(None, "--weight", help="Override patient weight (kg)."),
    height: Optional[float] = typer.Option(None, "--height", help="Override patient height (m)."),
    sex: Optional[str] = typer.Option(None, "--sex", help="Override patient sex (F/M/O)."),
    dose: Optional[float] = typer.Option(None, "--dose", help="Override injected dose (Bq)."),
    injection_time: Optional[str] = typer.Option(None, "--injection-time",
                                                 help="Override injection date-time (ISO 8601)."),
    always_backcompute: bool = typer.Option(False, "--always-backcompute",
                                            help="Reference time from the frame (rule 3) first."),
    lbm: str = typer.Option("janmahasatian", "--lbm", help="janmahasatian | james"),
) -> None:
    """SUVbw and SUL factors of a PET DICOM series, with provenance (docs/methods.md)."""
    from petcohort.pipelines.ingest import suv_report

    report = suv_report(dicom_dir, overrides=_overrides(weight, height, sex, dose, injection_time),
                        always_backcompute=always_backcompute, lbm=lbm)
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
    else:
        for k, v in report.items():
            typer.echo(f"{k}: {v}")
    if report.get("reason"):
        raise typer.Exit(1)


@app.command()
def quantify(
    pet: str = typer.Option(..., "--pet", help="Image: NIfTI file, or STORE::STUDY_KEY."),
    mask: str = typer.Option(..., "--mask", help="Mask: NIfTI file, or STORE::STUDY_KEY::seg/SOURCE."),
    radius_mm: float = typer.Option(6.2035, "--radius-mm", help="SULpeak sphere radius (mm)."),
    connectivity: int = typer.Option(26, "--connectivity", help="6, 18 or 26."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Biomarkers of one image and mask: per-study values and a per-lesion table."""
    from petcohort.pipelines.quantify_cli import quantify_files, render_text

    try:
        result = quantify_files(pet, mask, radius_mm=radius_mm, connectivity=connectivity)
    except PetCohortError as exc:
        _fail(exc)
    typer.echo(json.dumps(result, indent=2, default=str) if as_json else render_text(result))


def _ints(text: Optional[str], name: str) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        typer.echo(f"error: [BAD_VALUE] {name} must be comma-separated integers, got {text!r}", err=True)
        raise typer.Exit(2) from None


def _floats3(text: Optional[str], name: str) -> Optional[tuple[float, float, float]]:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        typer.echo(f"error: [BAD_VALUE] {name} must be three comma-separated numbers (z,y,x), got {text!r}",
                   err=True)
        raise typer.Exit(2)
    return values  # type: ignore[return-value]


def _run_config(config: Optional[Path], sets: Optional[list[str]], flags: dict):
    """The resolved RunConfig: the file, then ``--set KEY=VALUE``, then the dedicated flags (None = not given).

    Every value is checked here, before any store or cluster is touched.
    """
    from petcohort.pipelines.config import load_config, parse_overrides

    overrides = parse_overrides(sets or [])
    overrides.update({k: v for k, v in flags.items() if v is not None})
    return load_config(config, overrides)


_CONFIG_HELP = "Run configuration (YAML, one section per stage/method; `petcohort config show` prints one)."
_SET_HELP = "Override one configuration key, e.g. --set quantify.radius_mm=6.0 (repeatable; wins over --config)."


@app.command()
def run(
    store: str = typer.Option(..., "--store", help="Cohort store path or URL."),
    config: Optional[Path] = typer.Option(None, "--config", help=_CONFIG_HELP),
    sets: Optional[list[str]] = typer.Option(None, "--set", help=_SET_HELP),
    cluster: Optional[Path] = typer.Option(None, "--cluster", help="cluster.yaml (default: ./cluster.yaml)."),
    stages: Optional[str] = typer.Option(None, "--stages", help="Comma-separated stages (default: all; the "
                                         "nnU-Net stages only with a model folder)."),
    force: bool = typer.Option(False, "--force", help="Redo committed work."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write results.zarr, tables/ and run_config.yaml here."),
    model_bl: Optional[Path] = typer.Option(None, "--model-bl", help="Trained U-Net_BL folder (segment.model_bl)."),
    model_fu: Optional[Path] = typer.Option(None, "--model-fu", help="Trained U-Net_FU folder (segment.model_fu)."),
    folds: Optional[str] = typer.Option(None, "--folds", help="Folds of the ensemble (default: all present)."),
    fold_map: Optional[Path] = typer.Option(None, "--fold-map",
                                            help="folds.json of export-nnunet: cross-validated predictions."),
    tta: Optional[bool] = typer.Option(None, "--tta/--no-tta", help="Test-time mirroring (default: on)."),
    tile_step: Optional[float] = typer.Option(None, "--tile-step",
                                              help="Sliding-window step, fraction of the patch (default 0.5)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda (nnU-Net inference; default auto)."),
    fu_mask_source: Optional[str] = typer.Option(None, "--fu-mask-source",
                                                 help="Baseline mask for U-Net_FU: auto | manual | nnunet_bl."),
) -> None:
    """Run every stage over the cohort (resumable), then the cohort statistics."""
    _setup_logging()
    flags = {"segment.model_bl": None if model_bl is None else str(model_bl),
             "segment.model_fu": None if model_fu is None else str(model_fu),
             "segment.folds": _ints(folds, "--folds"), "segment.fold_map": None if fold_map is None else str(fold_map),
             "segment.tta": tta, "segment.tile_step": tile_step, "segment.device": device,
             "segment.fu_mask_source": fu_mask_source}
    try:
        cfg = _run_config(config, sets, flags)
        names = [s for s in stages.split(",") if s] if stages else None
        from petcohort.pipelines.run import run_cohort
        from petcohort.pipelines.stages import stage_order

        if names is not None:
            stage_order(names)  # an unknown stage name is refused here too, before any work
        summary = run_cohort(store, cluster_file=cluster, stages=names, force=force, out=out, config=cfg)
    except PetCohortError as exc:
        _fail(exc)
    if summary.failed:
        raise typer.Exit(1)


config_app = typer.Typer(help="The run configuration (run.yaml).", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(
    config: Optional[Path] = typer.Option(None, "--config", help=_CONFIG_HELP),
    sets: Optional[list[str]] = typer.Option(None, "--set", help=_SET_HELP),
) -> None:
    """Print the resolved run configuration (defaults, then the file, then --set) as YAML."""
    from petcohort.pipelines.config import to_yaml

    try:
        cfg = _run_config(config, sets, {})
    except PetCohortError as exc:
        _fail(exc)
    typer.echo(to_yaml(cfg), nl=False)


@app.command("export-nnunet")
def export_nnunet_cmd(
    store: str = typer.Option(..., "--store", help="Cohort store path or URL."),
    out: Path = typer.Option(..., "--out", help="nnU-Net raw folder to write."),
    dataset_id_bl: int = typer.Option(501, "--dataset-id-bl", help="Dataset id of U-Net_BL (2 channels)."),
    dataset_id_fu: int = typer.Option(502, "--dataset-id-fu", help="Dataset id of U-Net_FU (4 channels)."),
    n_folds: int = typer.Option(5, "--folds", help="Patient-level folds (balanced by site and follow-ups)."),
    seed: int = typer.Option(0, "--seed", help="Fold assignment seed."),
    suv_clip: float = typer.Option(5.0, "--suv-clip", help="PET channel clip (SUVbw)."),
) -> None:
    """Export the cohort as nnU-Net raw datasets (BL and FU) with shared patient-level splits."""
    _setup_logging()
    from petcohort.storage.nnunet_export import export_nnunet
    from petcohort.storage.store import CohortStore

    try:
        result = export_nnunet(CohortStore.open(store, mode="r"), out, dataset_id_bl=dataset_id_bl,
                               dataset_id_fu=dataset_id_fu, n_folds=n_folds, seed=seed, suv_clip=suv_clip)
    except PetCohortError as exc:
        _fail(exc)
    typer.echo(json.dumps(result, indent=2, default=str))


@app.command("export-dicom")
def export_dicom_cmd(
    store: str = typer.Option(..., "--store", help="Cohort store path or URL."),
    source: Path = typer.Option(..., "--source", help="The DICOM archive the store was ingested from."),
    out: Path = typer.Option(..., "--out", help="Output folder: <study>/<source>/seg.dcm, sr.dcm, export_report.json."),
    sources: Optional[str] = typer.Option(None, "--sources", help="Comma-separated segmentation sources "
                                          "(e.g. manual,nnunet_bl; default: all quantified)."),
    pet_series: Optional[str] = typer.Option(None, "--pet-series", help="The --pet-series regex given to ingest."),
    connectivity: int = typer.Option(26, "--connectivity", help="Lesion connectivity quantify used (6/18/26)."),
) -> None:
    """Write each study's lesions as DICOM SEG + SR TID 1500 referencing the source PET; skips are reported."""
    _setup_logging()
    from petcohort.pipelines.export_dicom import export_dicom
    from petcohort.storage.store import CohortStore

    names = [s.strip() for s in sources.split(",") if s.strip()] if sources else None
    try:
        result = export_dicom(CohortStore.open(store, mode="r"), source, out, sources=names,
                              pet_series=pet_series, connectivity=connectivity)
    except PetCohortError as exc:
        _fail(exc)
    typer.echo(json.dumps({"exported": len(result["exported"]), "skipped": result["skipped"]}, indent=2))


@app.command("train")
def train_cmd(
    raw: Path = typer.Option(..., "--raw", help="nnU-Net raw folder from export-nnunet."),
    dataset_id: int = typer.Option(..., "--dataset-id", help="501 (U-Net_BL) or 502 (U-Net_FU) by default."),
    work: Path = typer.Option(..., "--work", help="Work folder (preprocessed/, results/)."),
    folds: str = typer.Option("0,1,2,3,4", "--folds", help="Folds to train."),
    features: int = typer.Option(8, "--features", help="Features of the first stage."),
    max_features: int = typer.Option(64, "--max-features", help="Largest feature count."),
    patch: str = typer.Option("48,48,48", "--patch", help="Patch size z,y,x (voxels)."),
    batch: int = typer.Option(2, "--batch", help="Batch size."),
    epochs: int = typer.Option(10, "--epochs", help="Epochs."),
    iterations: int = typer.Option(25, "--iterations", help="Training iterations per epoch."),
    val_iterations: int = typer.Option(5, "--val-iterations", help="Validation iterations per epoch."),
    lr: float = typer.Option(1e-2, "--lr", help="Initial learning rate."),
    target_spacing: Optional[str] = typer.Option(None, "--target-spacing", help="Resample to z,y,x mm."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    seed: int = typer.Option(0, "--seed", help="torch/numpy seed."),
    validate: bool = typer.Option(True, "--validate/--no-validate", help="Dice of each fold's held-out cases."),
) -> None:
    """Plan, preprocess and train nnU-Net folds in-process (nnU-Net's own pipeline, configurable plans)."""
    _setup_logging()
    from petcohort.engine.segment.nnunet import TrainPlan
    from petcohort.pipelines.train import train

    patch_size = tuple(int(v) for v in _floats3(patch, "--patch"))
    try:
        plan = TrainPlan(base_features=features, max_features=max_features, patch_size=patch_size,
                         batch_size=batch, epochs=epochs, iterations_per_epoch=iterations,
                         val_iterations_per_epoch=val_iterations, initial_lr=lr,
                         target_spacing=_floats3(target_spacing, "--target-spacing"))
        result = train(raw, work, dataset_id=dataset_id, folds=_ints(folds, "--folds"), plan=plan,
                       device=device, seed=seed, validate=validate)
    except PetCohortError as exc:
        _fail(exc)
    typer.echo(json.dumps(result, indent=2, default=str))


@app.command()
def manifest(
    store: str = typer.Option(..., "--store", help="Cohort store path or URL."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    why: bool = typer.Option(False, "--why", help="List the study-stages a run would redo, and what changed."),
    config: Optional[Path] = typer.Option(None, "--config", help="With --why: the run configuration to compare "
                                          "against (default: every default)."),
    sets: Optional[list[str]] = typer.Option(None, "--set", help="With --why: " + _SET_HELP),
    stages: Optional[str] = typer.Option(None, "--stages", help="With --why: comma-separated stages (default: as "
                                         "`run`)."),
) -> None:
    """Print the manifest: status of every study x stage, with reason codes (--why: what is stale and why)."""
    from petcohort.storage.manifest import manifest_frame, why_frame
    from petcohort.storage.store import CohortStore

    try:
        opened = CohortStore.open(store, mode="r")
        if why:
            from petcohort.pipelines.run import stale_study_stages

            rows = stale_study_stages(opened, config=_run_config(config, sets, {}),
                                      stages=[s for s in stages.split(",") if s] if stages else None)
            frame = why_frame(rows)
        else:
            frame = manifest_frame(opened)
    except PetCohortError as exc:
        _fail(exc)
    if why and not as_json:
        typer.echo("\n".join(f"{r.study} {r.stage}: {r.why}" for r in frame.itertuples()) if len(frame)
                   else "every study-stage is up to date")
        return
    typer.echo(frame.to_json(orient="records") if as_json else frame.to_string())


@app.command()
def reasons(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List every reason code with its category and meaning (the table of docs/reasons.md)."""
    from petcohort.engine.reasons import REASONS

    rows = [r._asdict() for r in REASONS.values()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["code"]) for r in rows)
    typer.echo("\n".join(f"{r['code']:<{width}}  {r['category']:<8}  {r['meaning']}" for r in rows))


@app.command()
def tables(
    store: str = typer.Option(..., "--store", help="Cohort store path or URL."),
    out: Path = typer.Option(..., "--out", help="Output folder (results.zarr, tables/)."),
) -> None:
    """Gather per-study results into results.zarr and the cohort tables."""
    _setup_logging()
    from petcohort.pipelines.tables import build_outputs
    from petcohort.storage.store import CohortStore

    try:
        build_outputs(CohortStore.open(store, mode="r"), out)
    except PetCohortError as exc:
        _fail(exc)


@app.command()
def report(
    store: str = typer.Option(..., "--store", help="Cohort store path or URL."),
    out: Path = typer.Option(..., "--out", help="Output folder (report.html)."),
) -> None:
    """Write the self-contained HTML cohort report (paper Figures 3-6, Tables 1-2)."""
    _setup_logging()
    from petcohort.pipelines.report import write_report

    try:
        path = write_report(store, out)
    except PetCohortError as exc:
        _fail(exc)
    typer.echo(str(path))


@app.command()
def dashboard(
    store: str = typer.Option(..., "--store", help="Cohort store path or URL."),
    port: int = typer.Option(5007, "--port", help="Port on 127.0.0.1."),
) -> None:
    """Serve the live monitoring dashboard on 127.0.0.1."""
    _setup_logging()
    from petcohort.pipelines.dashboard import serve

    try:
        serve(store, port=port)
    except PetCohortError as exc:
        _fail(exc)


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-output"), "--out", help="Output folder."),
    patients: int = typer.Option(12, "--patients", help="Synthetic patients."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    cluster: Optional[Path] = typer.Option(None, "--cluster", help="cluster.yaml (default: ./cluster.yaml)."),
    models: Optional[Path] = typer.Option(Path("models/demo"), "--models",
                                          help="Folder with the demo U-Net_BL/U-Net_FU (Dataset501_*, Dataset502_*)."),
    nnunet: bool = typer.Option(True, "--nnunet/--no-nnunet", help="Run the nnU-Net stages with --models."),
    config: Optional[Path] = typer.Option(None, "--config", help=_CONFIG_HELP),
    sets: Optional[list[str]] = typer.Option(None, "--set", help=_SET_HELP),
) -> None:
    """Synthetic cohort -> whole pipeline (with nnU-Net when the models are there) -> tables and report in OUT."""
    _setup_logging()
    from petcohort.pipelines.demo import run_demo

    try:
        cfg = _run_config(config, sets, {}) if config is not None or sets else None
        run_demo(out, patients=patients, seed=seed, cluster_file=cluster, models=models if nnunet else None,
                 config=cfg)
    except PetCohortError as exc:
        _fail(exc)


key_app = typer.Typer(help="The pseudonym key (kept outside the store; see README, 'Pseudonym key').",
                      no_args_is_help=True)
app.add_typer(key_app, name="key")


@key_app.command("export")
def key_export(
    store: str = typer.Option(..., "--store", help="Cohort store path or URL holding pseudonym.key (older stores)."),
    to: Optional[Path] = typer.Option(None, "--to", help="Key file to write (default: the default key file, "
                                      "$XDG_CONFIG_HOME/petcohort/pseudonym.key)."),
) -> None:
    """Move a store's embedded pseudonym key into a key file (0600); the store keeps only its fingerprint."""
    _setup_logging()
    from petcohort.storage.keys import ENV_PSEUDONYM_KEY, ENV_PSEUDONYM_KEY_FILE
    from petcohort.storage.store import CohortStore

    try:
        result = CohortStore.open(store, mode="r+").export_pseudonym_key(to)
    except PetCohortError as exc:
        _fail(exc)
    typer.echo(json.dumps(result, indent=2))
    typer.echo(f"The pseudonym key is now in {result['key_file']}: keep it private and back it up "
               "(without it new studies get new pseudonyms).", err=True)
    if not result["in_use"]:
        typer.echo(f"To use this store, set {ENV_PSEUDONYM_KEY_FILE}={result['key_file']} "
                   f"(and unset {ENV_PSEUDONYM_KEY}).", err=True)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
