"""Every command of the CLI contract (docs/contracts.md) exists and answers --help."""
import pytest
from typer.testing import CliRunner

from petcohort.pipelines.cli import app

COMMANDS = ["synth", "ingest", "suv", "quantify", "run", "manifest", "tables", "report", "dashboard", "demo",
            "export-nnunet", "train"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command):
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_top_level_help_lists_commands():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output
