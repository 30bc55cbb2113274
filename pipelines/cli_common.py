"""Helpers every ``petcohort`` command module shares: logging setup, the one way to fail, option parsing.

The commands themselves live in :mod:`petcohort.pipelines.cli_data`,
:mod:`petcohort.pipelines.cli_run` and :mod:`petcohort.pipelines.cli_report`;
:mod:`petcohort.pipelines.cli` creates the typer ``app`` and registers them.
Heavy imports stay lazy (inside the functions) so ``petcohort --help`` is
instant.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer

from petcohort.engine.errors import PetCohortError

__all__ = ["CONFIG_HELP", "SET_HELP", "WeightOption", "HeightOption", "SexOption", "DoseOption",
           "InjectionTimeOption", "setup_logging", "fail", "suv_overrides", "parse_ints", "parse_floats3", "run_config"]

CONFIG_HELP = "Run configuration (YAML, one section per stage/method; `petcohort config show` prints one)."
SET_HELP = "Override one configuration key, e.g. --set quantify.radius_mm=6.0 (repeatable; wins over --config)."

# The SUV override options of `ingest` and `suv`, defined once (typer's documented Annotated form: the
# parameter's `= None` is the default); :func:`suv_overrides` turns them into the overrides dict.
WeightOption = Annotated[Optional[float], typer.Option("--weight", help="Override patient weight (kg).")]
HeightOption = Annotated[Optional[float], typer.Option("--height", help="Override patient height (m).")]
SexOption = Annotated[Optional[str], typer.Option("--sex", help="Override patient sex (F/M/O).")]
DoseOption = Annotated[Optional[float], typer.Option("--dose", help="Override injected dose (Bq).")]
InjectionTimeOption = Annotated[Optional[str], typer.Option("--injection-time",
                                                            help="Override injection date-time (ISO 8601).")]


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr (stdout carries the commands' JSON output)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def fail(exc: PetCohortError, code: int = 2) -> NoReturn:
    """Print ``error: [REASON] message`` on stderr and exit with ``code``."""
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code)


def suv_overrides(weight: Optional[float], height: Optional[float], sex: Optional[str],
                  dose: Optional[float], injection_time: Optional[str]) -> dict:
    """The SUV overrides given on the command line (options left out are absent, not None)."""
    out = {"weight_kg": weight, "height_m": height, "sex": sex, "dose_bq": dose,
           "injection_datetime": injection_time}
    return {k: v for k, v in out.items() if v is not None}


def parse_ints(text: Optional[str], name: str) -> Optional[list[int]]:
    """Comma-separated integers of option ``name`` (None when not given); exit 2 on a bad value."""
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        typer.echo(f"error: [BAD_VALUE] {name} must be comma-separated integers, got {text!r}", err=True)
        raise typer.Exit(2) from None


def parse_floats3(text: Optional[str], name: str) -> Optional[tuple[float, float, float]]:
    """Three comma-separated numbers (z,y,x) of option ``name`` (None when not given); exit 2 otherwise."""
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


def run_config(config: Optional[Path], sets: Optional[list[str]], flags: dict):
    """The resolved RunConfig: the file, then ``--set KEY=VALUE``, then the dedicated flags (None = not given).

    Every value is checked here, before any store or cluster is touched.
    """
    from petcohort.pipelines.config import load_config, parse_overrides

    overrides = parse_overrides(sets or [])
    overrides.update({k: v for k, v in flags.items() if v is not None})
    return load_config(config, overrides)
