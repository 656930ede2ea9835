"""The command line: help on every command, one-line errors with exit code 2, no tracebacks."""

import json

import pytest
import typer
from typer.testing import CliRunner

from glioseg.cli import app

runner = CliRunner()


def command_paths(group, prefix=()):
    """Every command and command group of the CLI, as the argument lists that reach it."""
    yield list(prefix)
    for name, command in getattr(group, "commands", {}).items():
        yield from command_paths(command, (*prefix, name))


ALL_COMMANDS = list(command_paths(typer.main.get_command(app)))


def test_the_cli_has_its_commands_and_groups():
    assert {"evaluate", "predict", "serve"} <= {path[0] for path in ALL_COMMANDS if path}
    assert ["server", "start"] in ALL_COMMANDS and ["tracking"] in ALL_COMMANDS


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=lambda path: " ".join(path) or "glioseg")
def test_help(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    assert "Traceback" not in result.output


def test_bad_param_is_one_line_naming_the_key(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("loss: focal\n")
    result = runner.invoke(app, ["check-params", str(params)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {params}: key 'loss': Input should be 'wbce', 'dice' or 'combined' (got 'focal')"
    ]
    assert "Traceback" not in result.output


def test_unknown_key(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  treshold: 0.5\n")
    result = runner.invoke(app, ["check-params", str(params)])
    assert result.exit_code == 2
    assert "unknown key 'train.treshold'" in result.output


def test_stage_with_missing_input_says_which_stage_to_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("epochs: 1\n")
    result = runner.invoke(app, ["stage", "clean"])
    assert result.exit_code == 2
    assert "data/raw/manifest.csv: not found (run `dvc repro download`)" in result.output


def test_download_from_missing_folder_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(f"data:\n  source: {tmp_path / 'nowhere'}\n")
    result = runner.invoke(app, ["stage", "download"])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1
    assert "nowhere" in result.output
    assert not (tmp_path / "data" / "raw" / "kaggle_3m").exists()


def test_check_metrics_command_outcomes(tmp_path):
    metrics, baseline, rules = tmp_path / "m.json", tmp_path / "b.json", tmp_path / "r.yaml"
    baseline.write_text(json.dumps({"test": {"dice_patient_mean": 0.80}}))
    rules.write_text("test.dice_patient_mean: {tolerance: 0.02}\n")
    metrics.write_text(json.dumps({"test": {"dice_patient_mean": 0.79}}))
    ok = runner.invoke(app, ["check-metrics", str(metrics), "--baseline", str(baseline), "--rules", str(rules)])
    assert ok.exit_code == 0 and "passed" in ok.output
    metrics.write_text(json.dumps({"test": {"dice_patient_mean": 0.70}}))
    bad = runner.invoke(app, ["check-metrics", str(metrics), "--baseline", str(baseline), "--rules", str(rules)])
    assert bad.exit_code == 1 and "FAILED" in bad.output
    assert "-0.1" in bad.output
