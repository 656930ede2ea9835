"""Team mode end to end, on loopback: PostgreSQL and the MLflow server started by glioseg, the tiny
pipeline and two queued experiments (two workers) logging to it, the runs read back through the REST
API alone, a local store migrated into it, a champion promoted by the gate, a prediction from
``models:/glioseg-lgg@champion``, and everything stopped by process id."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from glioseg.config.compose import compose_params
from glioseg.tracking import procfs, server
from tests.test_pipeline import PROJECT, TINY, make_project, project_env, run, run_queue

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not shutil.which("runuser") and os.geteuid() == 0, reason="needs runuser"),
]

TEAM = {**TINY, "sweeps": {}}


def rest(url: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{url}{path}", data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    root = tmp_path_factory.mktemp("team")
    env = project_env()
    make_project(root, env, compose_params(TEAM))
    # A first run on the default local store, to migrate into the server afterwards.
    run(["dvc", "repro", "train"], root, env)
    local_store = f"sqlite:///{root / 'mlflow.db'}"
    state = server.start(root)
    try:
        served = {**env, "MLFLOW_TRACKING_URI": state.url}
        run(["git", "add", "-A"], root, env)
        run(["git", "commit", "-qm", "local run"], root, env)
        run(["dvc", "repro", "--force", "train"], root, served)
        run(["dvc", "repro"], root, served)
        run(["git", "add", "-A"], root, env)
        run(["git", "commit", "-qm", "served run"], root, env)
        yield {"root": root, "env": served, "state": state, "local_store": local_store}
    finally:
        server.stop(root)
        shutil.rmtree(server.cluster_dir(root), ignore_errors=True)


def test_the_server_runs_on_postgresql_on_loopback_ports(team):
    state = team["state"]
    assert state.url.startswith("http://127.0.0.1:")
    assert (Path(state.postgres_data) / "PG_VERSION").is_file()
    assert (server.state_dir(team["root"]) / "postgres.password").stat().st_mode & 0o777 == 0o600
    command = Path(f"/proc/{state.mlflow_pid}/cmdline").read_bytes().split(b"\0")
    assert b"--backend-store-uri" in command
    assert command[command.index(b"--backend-store-uri") + 1].startswith(b"postgresql+psycopg2://glioseg@127.0.0.1:")
    assert (server.state_dir(team["root"]) / "pgpass").stat().st_mode & 0o777 == 0o600


def test_queued_experiments_with_two_workers_land_on_the_server(team):
    root, env, url = team["root"], team["env"], team["state"].url
    run(["dvc", "exp", "run", "--queue", "-S", "lr=0.001"], root, env)
    run(["dvc", "exp", "run", "--queue", "-S", "loss=dice"], root, env)
    status = run_queue(root, env, workers=2)
    assert status.count("Success") == 2, status
    run(["dvc", "exp", "run", "--temp", "-S", "lr=0.002"], root, env)
    experiment = rest(url, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=glioseg")["experiment"]
    runs = rest(
        url, "/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 100}
    )["runs"]
    trained = [r for r in runs if r["info"]["run_name"] == "train" and r["info"]["status"] == "FINISHED"]
    params = [{p["key"]: p["value"] for p in r["data"]["params"]} for r in trained]
    assert {p["loss"] for p in params} >= {"combined", "dice"}
    assert {p["lr"] for p in params} >= {"0.001", "0.002", "0.003"}
    assert not [r for r in runs if r["info"]["status"] == "RUNNING"]

    newest = max(trained, key=lambda r: r["info"]["start_time"])
    run_id = newest["info"]["run_id"]
    history = rest(url, f"/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key=val_dice")["metrics"]
    assert sorted(point["step"] for point in history) == list(range(1, TEAM["epochs"] + 1))
    listed = {item["path"] for item in rest(url, f"/api/2.0/mlflow/artifacts/list?run_id={run_id}")["files"]}
    assert {"overlays", "checkpoint", "augment", "curves"} <= listed
    query = urllib.parse.urlencode({"run_id": run_id, "path": "overlays/val_epoch_001.png"})
    with urllib.request.urlopen(f"{url}/get-artifact?{query}", timeout=30) as answer:
        assert answer.read(8) == b"\x89PNG\r\n\x1a\n"
    assert newest["info"]["artifact_uri"].startswith("mlflow-artifacts:/"), "artifacts go through the server"
    input_datasets = newest.get("inputs", {}).get("dataset_inputs", [])
    assert input_datasets and input_datasets[0]["dataset"]["name"].startswith("lgg-")


def test_promote_moves_the_champion_only_when_the_gate_passes(team, tmp_path):
    root, env = team["root"], team["env"]
    promote = [sys.executable, "-m", "glioseg.cli", "promote", "--name", "glioseg-lgg"]
    first = run([*promote, "--rules", str(PROJECT / "ci/floors.yaml")], root, env)
    assert "champion" in first.stdout
    champion = rest(team["state"].url, "/api/2.0/mlflow/registered-models/alias?name=glioseg-lgg&alias=champion")
    version = champion["model_version"]["version"]

    impossible = tmp_path / "floors.yaml"
    impossible.write_text(yaml.safe_dump({"test.dice_patient_mean": {"min": 1.01}}))
    refused = subprocess.run(
        [*promote, "--rules", str(impossible)], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert refused.returncode == 1
    assert "test.dice_patient_mean" in refused.stdout + refused.stderr
    assert "champion stays at version" in refused.stdout + refused.stderr
    again = rest(team["state"].url, "/api/2.0/mlflow/registered-models/alias?name=glioseg-lgg&alias=champion")
    assert again["model_version"]["version"] == version

    out = tmp_path / "predicted"
    patient = next((root / "data/raw/kaggle_3m").iterdir())
    run(
        [
            sys.executable,
            "-m",
            "glioseg.cli",
            "predict",
            str(patient),
            "--out",
            str(out),
            "--model",
            "models:/glioseg-lgg@champion",
            "--device",
            "cpu",
        ],
        root,
        env,
    )
    assert len(list(out.rglob("*_mask.tif"))) == len(list(patient.glob("*_mask.tif")))


def test_a_local_store_migrates_once_with_its_histories_and_artifacts(team):
    root, url = team["root"], team["state"].url
    command = [sys.executable, "-m", "glioseg.cli", "tracking", "migrate", "--from", team["local_store"], "--to", url]
    first = json.loads(run(command, root, team["env"]).stdout)
    again = json.loads(run(command, root, team["env"]).stdout)
    assert first["runs_copied"] == 1 and again["runs_copied"] == 0 and again["runs_already_there"] == 1
    assert first["model_versions_copied"] == 1 and again["model_versions_copied"] == 0
    experiment = rest(url, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=glioseg")["experiment"]
    runs = rest(
        url,
        "/api/2.0/mlflow/runs/search",
        {
            "experiment_ids": [experiment["experiment_id"]],
            "max_results": 100,
            "filter": "tags.`glioseg.migrated_from` != ''",
        },
    )["runs"]
    assert len(runs) == 1
    run_id = runs[0]["info"]["run_id"]
    history = rest(url, f"/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key=train_loss")["metrics"]
    assert len(history) == TEAM["epochs"]
    listed = {item["path"] for item in rest(url, f"/api/2.0/mlflow/artifacts/list?run_id={run_id}")["files"]}
    assert "checkpoint" in listed


def test_stop_ends_every_process_it_started(tmp_path):
    state = server.start(tmp_path)
    postgres_pid = int((Path(state.postgres_data) / "postmaster.pid").read_text().split()[0])
    server.stop(tmp_path)
    shutil.rmtree(server.cluster_dir(tmp_path), ignore_errors=True)
    for pid in (state.mlflow_pid, postgres_pid):
        # Ended: gone, or a zombie (PostgreSQL's postmaster is init's child; reaping it is init's job).
        assert procfs.identity(pid) is None, pid
    assert not (server.state_dir(tmp_path) / "state.json").exists()
