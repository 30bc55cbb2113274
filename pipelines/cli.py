"""The ``petcohort`` command (typer). Each command parses its options once and
hands them to one function in ``pipelines/``; heavy imports stay lazy so
``petcohort --help`` is instant.

This module creates :data:`app` (the console script
``petcohort.pipelines.cli:app``) and registers the commands, which live by
concern in :mod:`petcohort.pipelines.cli_data` (synthetic data, ingest, SUV,
quantify, exports), :mod:`petcohort.pipelines.cli_run` (run, configuration,
manifest, reason codes, pseudonym key) and
:mod:`petcohort.pipelines.cli_report` (tables, report, dashboard, demo,
training); their shared helpers are in :mod:`petcohort.pipelines.cli_common`.
"""
from __future__ import annotations

import logging

import typer

from petcohort.pipelines.cli_data import export_dicom_cmd, export_nnunet_cmd, ingest, quantify, suv, synth
from petcohort.pipelines.cli_report import dashboard, demo, report, tables, train_cmd
from petcohort.pipelines.cli_run import config_app, key_app, manifest, reasons, run

__all__ = ["app", "main"]

app = typer.Typer(
    name="petcohort",
    help="Cohort analytics for longitudinal whole-body FDG PET/CT (synthetic cohort, SUV/SUL, "
    "SULpeak/TLG/PBI/PLI, evaluation, response, PERCIST, report, dashboard).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

log = logging.getLogger("petcohort")

# Registration order is the order of `petcohort --help` (typer lists commands as registered, then the groups).
app.command()(synth)
app.command()(ingest)
app.command()(suv)
app.command()(quantify)
app.command()(run)
app.command("export-nnunet")(export_nnunet_cmd)
app.command("export-dicom")(export_dicom_cmd)
app.command("train")(train_cmd)
app.command()(manifest)
app.command()(reasons)
app.command()(tables)
app.command()(report)
app.command()(dashboard)
app.command()(demo)
app.add_typer(config_app, name="config")
app.add_typer(key_app, name="key")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
