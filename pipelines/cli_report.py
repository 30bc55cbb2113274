"""Output and model commands of ``petcohort``: ``tables``, ``report``, ``dashboard``, ``demo``, ``train``.

Plain functions whose typer options carry the help text; registered on the
app, in the order of ``petcohort --help``, by :mod:`petcohort.pipelines.cli`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from petcohort.engine.errors import PetCohortError
from petcohort.pipelines.cli_common import (CONFIG_HELP, SET_HELP, fail, parse_floats3, parse_ints, run_config,
                                            setup_logging)

__all__ = ["tables", "report", "dashboard", "demo", "train_cmd"]


def tables(
    store: str = typer.Option(..., "--store", help="Cohort store path or URL."),
    out: Path = typer.Option(..., "--out", help="Output folder (results.zarr, tables/)."),
) -> None:
    """Gather per-study results into results.zarr and the cohort tables."""
    setup_logging()
    from petcohort.pipelines.tables import build_outputs
    from petcohort.storage.store import CohortStore

    try:
        build_outputs(CohortStore.open(store, mode="r"), out)
    except PetCohortError as exc:
        fail(exc)


def report(
    store: str = typer.Option(..., "--store", help="Cohort store path or URL."),
    out: Path = typer.Option(..., "--out", help="Output folder (report.html)."),
) -> None:
    """Write the self-contained HTML cohort report (paper Figures 3-6, Tables 1-2)."""
    setup_logging()
    from petcohort.pipelines.report import write_report

    try:
        path = write_report(store, out)
    except PetCohortError as exc:
        fail(exc)
    typer.echo(str(path))


def dashboard(
    store: str = typer.Option(..., "--store", help="Cohort store path or URL."),
    port: int = typer.Option(5007, "--port", help="Port on 127.0.0.1."),
) -> None:
    """Serve the live monitoring dashboard on 127.0.0.1."""
    setup_logging()
    from petcohort.pipelines.dashboard import serve

    try:
        serve(store, port=port)
    except PetCohortError as exc:
        fail(exc)


def demo(
    out: Path = typer.Option(Path("demo-output"), "--out", help="Output folder."),
    patients: int = typer.Option(12, "--patients", help="Synthetic patients."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    cluster: Optional[Path] = typer.Option(None, "--cluster", help="cluster.yaml (default: ./cluster.yaml)."),
    models: Optional[Path] = typer.Option(Path("models/demo"), "--models",
                                          help="Folder with the demo U-Net_BL/U-Net_FU (Dataset501_*, Dataset502_*)."),
    nnunet: bool = typer.Option(True, "--nnunet/--no-nnunet", help="Run the nnU-Net stages with --models."),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    sets: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Synthetic cohort -> whole pipeline (with nnU-Net when the models are there) -> tables and report in OUT."""
    setup_logging()
    from petcohort.pipelines.demo import run_demo

    try:
        cfg = run_config(config, sets, {}) if config is not None or sets else None
        run_demo(out, patients=patients, seed=seed, cluster_file=cluster, models=models if nnunet else None,
                 config=cfg)
    except PetCohortError as exc:
        fail(exc)


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
    setup_logging()
    from petcohort.engine.segment.nnunet import TrainPlan
    from petcohort.pipelines.train import train

    patch_size = tuple(int(v) for v in parse_floats3(patch, "--patch"))
    try:
        plan = TrainPlan(base_features=features, max_features=max_features, patch_size=patch_size,
                         batch_size=batch, epochs=epochs, iterations_per_epoch=iterations,
                         val_iterations_per_epoch=val_iterations, initial_lr=lr,
                         target_spacing=parse_floats3(target_spacing, "--target-spacing"))
        result = train(raw, work, dataset_id=dataset_id, folds=parse_ints(folds, "--folds"), plan=plan,
                       device=device, seed=seed, validate=validate)
    except PetCohortError as exc:
        fail(exc)
    typer.echo(json.dumps(result, indent=2, default=str))
