"""One training, one MLflow run: through kills and resumes, with a lock against a second trainer."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from glioseg import paths
from glioseg.config.schema import parse_params
from glioseg.errors import BusyError
from glioseg.io import exclusive_lock
from glioseg.pipeline.runner import DATA_STAGES, stage_function
from glioseg.pipeline.stages import train as experiment
from glioseg.tracking import store as tracking
from tests.conftest import TINY_PARAMS

PARAMS = {
    **TINY_PARAMS,
    "epochs": 3,
    "data": {"synthetic": {"patients": 6, "slices": 8, "size": 64, "seed": 1}},
    "run": {**TINY_PARAMS["run"], "overlay_every": 1},
}


@pytest.fixture
def project(tmp_path, monkeypatch):
    """The data stages of a tiny synthetic set in a fresh folder, with its own MLflow store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    params = parse_params(PARAMS)
    for stage in DATA_STAGES:
        stage_function(stage)(params)
    return params


def runs_named(name: str):
    tracker = tracking.client()
    experiment_id = tracking.ensure_experiment()
    return tracker, tracker.search_runs([experiment_id], filter_string=f"attributes.run_name = '{name}'")


def stop_after_epoch(stopped_epoch: int, monkeypatch) -> None:
    """Make the training die right after ``stopped_epoch`` is checkpointed, as a kill would."""
    logged = experiment.RunLogger.__call__

    def dying(self, epoch, row, model):
        logged(self, epoch, row, model)
        if epoch == stopped_epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(experiment.RunLogger, "__call__", dying)


def test_a_resumed_training_continues_its_mlflow_run(project, monkeypatch):
    with monkeypatch.context() as patch:
        stop_after_epoch(2, patch)
        with pytest.raises(KeyboardInterrupt):
            experiment.run(project)
    summary = experiment.run(project)
    tracker, runs = runs_named("train")
    assert [run.info.run_id for run in runs] == [summary["mlflow_run_id"]]
    run = runs[0]
    assert run.info.status == "FINISHED"
    history = tracker.get_metric_history(run.info.run_id, "val_dice")
    assert sorted(point.step for point in history) == [1, 2, 3]
    assert run.data.params["lr"] == str(project.lr)

    again = experiment.run(project)  # resumes at the last epoch: same run, no new one
    _, runs = runs_named("train")
    assert again["mlflow_run_id"] == summary["mlflow_run_id"] and len(runs) == 1


def test_a_run_whose_process_died_is_marked_killed_at_the_next_start(project):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    tracker = tracking.client()
    experiment_id = tracking.ensure_experiment()
    orphan = tracker.create_run(
        experiment_id,
        run_name="train",
        tags={tracking.OWNER_PID: dead.stdout.strip(), tracking.OWNER_HOST: socket.gethostname()},
    )
    alive = tracker.create_run(
        experiment_id,
        run_name="other",
        tags={tracking.OWNER_PID: str(os.getpid()), tracking.OWNER_HOST: socket.gethostname()},
    )
    elsewhere = tracker.create_run(
        experiment_id,
        run_name="remote",
        tags={tracking.OWNER_PID: dead.stdout.strip(), tracking.OWNER_HOST: "another-host"},
    )
    experiment.run(project)
    status = {
        run_id: tracker.get_run(run_id).info.status
        for run_id in (orphan.info.run_id, alive.info.run_id, elsewhere.info.run_id)
    }
    assert status == {orphan.info.run_id: "KILLED", alive.info.run_id: "RUNNING", elsewhere.info.run_id: "RUNNING"}


def test_a_second_trainer_on_the_same_outputs_is_refused_naming_the_first(project):
    busy = rf"models/checkpoints: another training \(pid {os.getpid()}\) is writing here; stop it"
    with exclusive_lock(paths.MODELS / "checkpoints", "training"), pytest.raises(BusyError, match=busy):
        experiment.run(project)
    assert not paths.MODEL.exists()
    experiment.run(project)  # the lock went with its holder
    assert paths.MODEL.is_file()


def test_a_damaged_checkpoint_is_reported_and_training_starts_over(project, capsys):
    checkpoints = paths.MODELS / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "last.pt").write_bytes(b"cut short")
    summary = experiment.run(project)
    assert "models/checkpoints/last.pt: not a glioseg checkpoint" in capsys.readouterr().err
    assert summary["best_epoch"] >= 1 and paths.MODEL.is_file()
