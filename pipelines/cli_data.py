"""Data commands of ``petcohort``: ``synth``, ``ingest``, ``suv``, ``quantify``, ``export-nnunet``, ``export-dicom``.

Plain functions whose typer options carry the help text; registered on the
app, in the order of ``petcohort --help``, by :mod:`petcohort.pipelines.cli`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from petcohort.engine.errors import PetCohortError
from petcohort.pipelines.cli_common import (DoseOption, HeightOption, InjectionTimeOption, SexOption, WeightOption,
                                            fail, run_config, setup_logging, suv_overrides)

__all__ = ["synth", "ingest", "suv", "quantify", "export_nnunet_cmd", "export_dicom_cmd"]


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
    setup_logging()
    from petcohort.pipelines.synthetic import synthesize

    try:
        summary = synthesize(out, patients=patients, sites=sites, seed=seed, fmt=fmt,
                             voxel_mm=voxel_mm, fov_scale=fov_scale)
    except PetCohortError as exc:
        fail(exc)
    typer.echo(json.dumps(summary, indent=2, default=str))


def ingest(
    src: Path = typer.Argument(..., help="A DICOM tree, NIfTI/autoPET folder."),
    store: str = typer.Option(..., "--store", help="Cohort store path or URL (created if missing)."),
    weight: WeightOption = None,
    height: HeightOption = None,
    sex: SexOption = None,
    dose: DoseOption = None,
    injection_time: InjectionTimeOption = None,
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
    setup_logging()
    from petcohort.pipelines.ingest import ingest_tree

    try:
        suv_config = run_config(config, sets, {}).suv   # a bad configuration fails here, before any study
        report = ingest_tree(src, store, overrides=suv_overrides(weight, height, sex, dose, injection_time),
                             pet_series=pet_series, ct_series=ct_series, mask_label=mask_label,
                             mask_kind=mask_kind, suv=suv_config)
    except PetCohortError as exc:
        fail(exc)
    typer.echo(json.dumps(report, indent=2, default=str))
    if report.get("failed"):
        raise typer.Exit(1)


def suv(
    dicom_dir: Path = typer.Argument(..., help="Folder holding one PET series."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    weight: WeightOption = None,
    height: HeightOption = None,
    sex: SexOption = None,
    dose: DoseOption = None,
    injection_time: InjectionTimeOption = None,
    always_backcompute: bool = typer.Option(False, "--always-backcompute",
                                            help="Reference time from the frame (rule 3) first."),
    lbm: str = typer.Option("janmahasatian", "--lbm", help="janmahasatian | james"),
) -> None:
    """SUVbw and SUL factors of a PET DICOM series, with provenance (docs/methods.md)."""
    from petcohort.pipelines.ingest import suv_report

    report = suv_report(dicom_dir, overrides=suv_overrides(weight, height, sex, dose, injection_time),
                        always_backcompute=always_backcompute, lbm=lbm)
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
    else:
        for k, v in report.items():
            typer.echo(f"{k}: {v}")
    if report.get("reason"):
        raise typer.Exit(1)


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
        fail(exc)
    typer.echo(json.dumps(result, indent=2, default=str) if as_json else render_text(result))


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
    setup_logging()
    from petcohort.storage.nnunet_export import export_nnunet
    from petcohort.storage.store import CohortStore

    try:
        result = export_nnunet(CohortStore.open(store, mode="r"), out, dataset_id_bl=dataset_id_bl,
                               dataset_id_fu=dataset_id_fu, n_folds=n_folds, seed=seed, suv_clip=suv_clip)
    except PetCohortError as exc:
        fail(exc)
    typer.echo(json.dumps(result, indent=2, default=str))


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
    setup_logging()
    from petcohort.pipelines.export_dicom import export_dicom
    from petcohort.storage.store import CohortStore

    names = [s.strip() for s in sources.split(",") if s.strip()] if sources else None
    try:
        result = export_dicom(CohortStore.open(store, mode="r"), source, out, sources=names,
                              pet_series=pet_series, connectivity=connectivity)
    except PetCohortError as exc:
        fail(exc)
    typer.echo(json.dumps({"exported": len(result["exported"]), "skipped": result["skipped"]}, indent=2))
