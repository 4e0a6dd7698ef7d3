"""The CLI: help for every command, one-line errors with a non-zero exit, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mnclglf.cli import main

COMMANDS = sorted(main.commands)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_explains_every_option(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    cmd = main.commands[command]
    for param in cmd.params:
        if param.name != "help":
            assert param.help, f"{command} --{param.name} has no help text"
            assert param.opts[0] in result.output


def test_bad_choice_is_one_line_and_exit_2() -> None:
    result = subprocess.run([sys.executable, "-m", "mnclglf", "pretrain", "--dataset", "mnist", "--method", "mnclglf"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--dataset" in lines[0]
    assert "Traceback" not in result.stderr


def test_bad_parameter_value_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["mnclglf"]["lam"] = -1
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    result = subprocess.run([sys.executable, "-m", "mnclglf", "pretrain", "--dataset", "digits", "--method", "mnclglf",
                             "--params", str(params)], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: mnclglf.lam = -1.0: expected a number > 0"
    assert not (tmp_path / "runs").exists() and not (tmp_path / "metrics").exists()


def test_missing_data_names_the_file_and_the_fix(tmp_path: Path, tiny_raw: dict) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_raw))
    result = CliRunner().invoke(main, ["pretrain", "--dataset", "digits", "--method", "mnclglf", "--params", str(params)])
    assert result.exit_code == 1
    assert "meta.json not found" in result.output and "mnclglf download --dataset digits" in result.output


def test_unknown_profile(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    result = CliRunner().invoke(main, ["tabulate", "--profile", "nope", "--params", str(root / "params.yaml")])
    assert result.exit_code == 1 and "--profile 'nope'" in result.output
