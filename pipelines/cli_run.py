"""Run commands of ``petcohort``: ``run``, ``manifest``, ``reasons`` and the ``config`` and ``key`` groups.

The top-level commands are plain functions registered on the app by
:mod:`petcohort.pipelines.cli`; the two groups (:data:`config_app`,
:data:`key_app`) are typer apps of their own, added there as sub-commands.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from petcohort.engine.errors import PetCohortError
from petcohort.pipelines.cli_common import CONFIG_HELP, SET_HELP, fail, parse_ints, run_config, setup_logging

__all__ = ["run", "config_app", "manifest", "reasons", "key_app"]


def run(
    store: str = typer.Option(..., "--store", help="Cohort store path or URL."),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    sets: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
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
    setup_logging()
    flags = {"segment.model_bl": None if model_bl is None else str(model_bl),
             "segment.model_fu": None if model_fu is None else str(model_fu),
             "segment.folds": parse_ints(folds, "--folds"),
             "segment.fold_map": None if fold_map is None else str(fold_map),
             "segment.tta": tta, "segment.tile_step": tile_step, "segment.device": device,
             "segment.fu_mask_source": fu_mask_source}
    try:
        cfg = run_config(config, sets, flags)
        names = [s for s in stages.split(",") if s] if stages else None
        from petcohort.pipelines.run import run_cohort
        from petcohort.pipelines.stages import stage_order

        if names is not None:
            stage_order(names)  # an unknown stage name is refused here too, before any work
        summary = run_cohort(store, cluster_file=cluster, stages=names, force=force, out=out, config=cfg)
    except PetCohortError as exc:
        fail(exc)
    if summary.failed:
        raise typer.Exit(1)


#: ``petcohort config ...``, added to the app by :mod:`petcohort.pipelines.cli`.
config_app = typer.Typer(help="The run configuration (run.yaml).", no_args_is_help=True)


@config_app.command("show")
def config_show(
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    sets: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Print the resolved run configuration (defaults, then the file, then --set) as YAML."""
    from petcohort.pipelines.config import to_yaml

    try:
        cfg = run_config(config, sets, {})
    except PetCohortError as exc:
        fail(exc)
    typer.echo(to_yaml(cfg), nl=False)


def manifest(
    store: str = typer.Option(..., "--store", help="Cohort store path or URL."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    why: bool = typer.Option(False, "--why", help="List the study-stages a run would redo, and what changed."),
    config: Optional[Path] = typer.Option(None, "--config", help="With --why: the run configuration to compare "
                                          "against (default: every default)."),
    sets: Optional[list[str]] = typer.Option(None, "--set", help="With --why: " + SET_HELP),
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

            rows = stale_study_stages(opened, config=run_config(config, sets, {}),
                                      stages=[s for s in stages.split(",") if s] if stages else None)
            frame = why_frame(rows)
        else:
            frame = manifest_frame(opened)
    except PetCohortError as exc:
        fail(exc)
    if why and not as_json:
        typer.echo("\n".join(f"{r.study} {r.stage}: {r.why}" for r in frame.itertuples()) if len(frame)
                   else "every study-stage is up to date")
        return
    typer.echo(frame.to_json(orient="records") if as_json else frame.to_string())


def reasons(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List every reason code with its category and meaning (the table of docs/reasons.md)."""
    from petcohort.engine.reasons import REASONS

    rows = [r._asdict() for r in REASONS.values()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["code"]) for r in rows)
    typer.echo("\n".join(f"{r['code']:<{width}}  {r['category']:<8}  {r['meaning']}" for r in rows))


#: ``petcohort key ...``, added to the app by :mod:`petcohort.pipelines.cli`.
key_app = typer.Typer(help="The pseudonym key (kept outside the store; see README, 'Pseudonym key').",
                      no_args_is_help=True)


@key_app.command("export")
def key_export(
    store: str = typer.Option(..., "--store", help="Cohort store path or URL holding pseudonym.key (older stores)."),
    to: Optional[Path] = typer.Option(None, "--to", help="Key file to write (default: the default key file, "
                                      "$XDG_CONFIG_HOME/petcohort/pseudonym.key)."),
) -> None:
    """Move a store's embedded pseudonym key into a key file (0600); the store keeps only its fingerprint."""
    setup_logging()
    from petcohort.storage.key_file import ENV_PSEUDONYM_KEY, ENV_PSEUDONYM_KEY_FILE
    from petcohort.storage.store import CohortStore

    try:
        result = CohortStore.open(store, mode="r+").export_pseudonym_key(to)
    except PetCohortError as exc:
        fail(exc)
    typer.echo(json.dumps(result, indent=2))
    typer.echo(f"The pseudonym key is now in {result['key_file']}: keep it private and back it up "
               "(without it new studies get new pseudonyms).", err=True)
    if not result["in_use"]:
        typer.echo(f"To use this store, set {ENV_PSEUDONYM_KEY_FILE}={result['key_file']} "
                   f"(and unset {ENV_PSEUDONYM_KEY}).", err=True)
