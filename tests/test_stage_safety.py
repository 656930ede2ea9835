"""A stage's guards: params first, a source never inside an output, one line for Ctrl-C and a full disk."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from glioseg.config.compose import compose_params
from glioseg.errors import ConfigError
from glioseg.pipeline import outputs as stage_outputs
from glioseg.pipeline import runner
from tests.test_run_continuity import PARAMS, project  # noqa: F401  (the fixture: a tiny set's data stages)

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A folder with the project's dvc.yaml and default params, as a stage's working directory."""
    (tmp_path / "dvc.yaml").write_text((PROJECT / "dvc.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(compose_params(), sort_keys=False))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    return tmp_path


def test_the_declared_outputs_cover_every_stage_and_sweep(repo):
    outputs = stage_outputs.declared_outputs()
    assert outputs["download"] == [Path("data/raw")]
    assert outputs["train"] == [Path("models/model.pt"), Path("models/train.json"), Path("models/history.csv")]
    sweeps = yaml.safe_load((repo / "params.yaml").read_text())["sweeps"]
    assert {f"sweep_train@{key}" for key in sweeps} <= set(outputs)
    assert outputs["sweep_train@wbce"][0] == Path("runs/wbce/model.pt")


@pytest.mark.parametrize("inside", ["data/raw/kaggle_3m", "data/raw", "data", "reports/evaluation/mine", "."])
def test_a_source_overlapping_an_output_is_refused_and_nothing_is_touched(repo, inside):
    patient = repo / "data/raw/kaggle_3m/MINE_1"
    patient.mkdir(parents=True)
    (patient / "MINE_1_1.tif").write_bytes(b"scan")
    (repo / inside).mkdir(parents=True, exist_ok=True)
    expected = rf"^params.yaml: key 'data.source': {re.escape(inside)} overlaps .*copy the data"
    with pytest.raises(ConfigError, match=expected):
        stage_outputs.check_source_outside_outputs(inside)
    assert (patient / "MINE_1_1.tif").read_bytes() == b"scan"


def test_a_source_beside_the_outputs_and_the_named_sources_pass(repo):
    (repo / "scans").mkdir()
    for source in ("scans", "synthetic", "kaggle", "data/rawish"):
        stage_outputs.check_source_outside_outputs(source)


def test_a_symlinked_source_into_an_output_is_refused(repo):
    (repo / "data/raw/kaggle_3m").mkdir(parents=True)
    (repo / "link").symlink_to(repo / "data/raw/kaggle_3m")
    with pytest.raises(ConfigError, match="link overlaps data/raw"):
        stage_outputs.check_source_outside_outputs("link")


def test_directory_outputs_are_cleared_only_for_the_stage_and_a_link_is_not_followed(repo, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("user")
    (elsewhere / "keep.png").write_bytes(b"user's")
    (repo / "reports").mkdir()
    (repo / "reports/figures").symlink_to(elsewhere)
    (repo / "reports/evaluation").mkdir()
    (repo / "reports/evaluation/old.csv").write_text("x")
    (repo / "reports/report.md").write_text("last good report")
    assert stage_outputs.clear_directory_outputs("report") == [Path("reports/figures")]
    assert (elsewhere / "keep.png").read_bytes() == b"user's"
    assert (repo / "reports/report.md").read_text() == "last good report"  # files are replaced, not removed
    assert (repo / "reports/evaluation/old.csv").exists()  # another stage's output
    assert stage_outputs.clear_directory_outputs(None) == []


def test_a_rejected_param_clears_nothing(repo, monkeypatch):
    (repo / "data/raw/kaggle_3m").mkdir(parents=True)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["lr"] = -1
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("DVC_STAGE", "download")
    with pytest.raises(ConfigError, match="key 'lr'"):
        runner.run(lambda params: {})
    assert (repo / "data/raw/kaggle_3m").is_dir()


def _stage_exit(function, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exited:
        runner.main(function)
    return exited.value.code, capsys.readouterr().err


def test_ctrl_c_in_a_stage_is_one_line_saying_how_to_resume(repo, monkeypatch, capsys):
    monkeypatch.setenv("DVC_STAGE", "train")

    def interrupted(params):
        raise KeyboardInterrupt

    code, err = _stage_exit(interrupted, capsys)
    assert code == 130
    assert err == (
        "interrupted: stage train stopped, the outputs of its last good run are kept; "
        "`dvc repro` carries on (a training resumes from its last checkpoint)\n"
    )


@pytest.mark.parametrize(
    ("code", "reason"), [(errno.ENOSPC, "no space left on device"), (errno.EROFS, "read-only file system")]
)
def test_a_full_or_read_only_disk_in_a_stage_is_one_line(repo, monkeypatch, capsys, code, reason):
    monkeypatch.setenv("DVC_STAGE", "evaluate")

    def full(params):
        raise OSError(code, reason.capitalize(), "reports/evaluation/x.png")

    exit_code, err = _stage_exit(full, capsys)
    assert exit_code == 2
    assert err == (
        f"error: reports/evaluation/x.png: cannot write: {reason}; stage evaluate stopped, "
        "the outputs of its last good run are kept\n"
    )


def test_an_unexpected_os_error_keeps_its_traceback(repo, monkeypatch):
    def broken(params):
        raise FileNotFoundError(errno.ENOENT, "gone")

    with pytest.raises(FileNotFoundError):
        runner.main(broken)


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    return (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
        ).returncode
        == 0
    )


@pytest.mark.slow
def test_a_training_on_a_full_disk_is_one_line_keeps_its_outputs_and_ends_its_run(project, tmp_path):  # noqa: F811
    """A real full disk (a 1 MiB tmpfs under models/): torch's writer fails, the run ends FAILED."""
    from glioseg.tracking import store as tracking

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    models = tmp_path / "models"
    if not _mount_tmpfs(models, "1m"):
        pytest.skip("cannot mount a tmpfs here (needs root and mount rights) to fill a disk for real")
    try:
        (models / "train.json").write_text('{"last": "good"}')
        script = "from glioseg.pipeline.stages import train; from glioseg.pipeline.runner import main; main(train.run)"
        env = {**os.environ, "DVC_STAGE": "train", "OMP_NUM_THREADS": "1"}
        done = subprocess.run(
            [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 2, done.stderr[-2000:]
        assert done.stderr.strip().splitlines()[-1] == (
            "error: models/checkpoints/last.pt: cannot write: no space left on device"
        )
        assert "Traceback" not in done.stderr
        assert (models / "train.json").read_text() == '{"last": "good"}'
        runs = tracking.client().search_runs([tracking.ensure_experiment()])
        assert [run.info.status for run in runs] == ["FAILED"]
    finally:
        subprocess.run(["umount", str(models)], check=True)


def test_a_cache_too_big_for_memory_is_one_line_naming_the_key(monkeypatch):
    from glioseg.data import build

    monkeypatch.setattr(build, "available_memory", lambda: 8 * 2**30)
    build.check_memory(3000, 256, 6)  # the real LGG set at 256 px: 1.1 GiB
    with pytest.raises(
        ConfigError,
        match=r"^params.yaml: key 'augment.image_size': 4096 px needs 281.2 GiB of "
        r"memory for the cache's 3000 slices, more than the 8.0 GiB available",
    ):
        build.check_memory(3000, 4096, 6)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "params.yaml: empty; it must hold the params"),
        ("lr: [1,\n", "params.yaml: not valid YAML at line 2, column 1"),
    ],
)
def test_make_repro_names_an_empty_or_broken_params_file_in_one_line(tmp_path, monkeypatch, text, message):
    """`make repro` runs check-params before DVC, whose own message for these is about dvc.yaml's sweeps."""
    from typer.testing import CliRunner

    from glioseg.cli import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(text)
    result = CliRunner().invoke(app, ["check-params", "params.yaml"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and result.output.startswith(f"error: {message}")
    assert "glioseg check-params params.yaml" in (PROJECT / "Makefile").read_text()
