"""End to end, at tiny scale: `dvc repro`, caching, `dvc exp run` (plain, --queue, --temp) and MLflow.

A copy of the project (dvc.yaml, stages, src) with a tiny params.yaml runs in a temporary git
repository; every DVC command is the real one, and the MLflow store is checked through MLflow's
own client and through the REST API of a real `mlflow server`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml

from glioseg.config.compose import compose_params
from glioseg.device import kernel_name

PROJECT = Path(__file__).resolve().parents[1]
COPIED = [
    "dvc.yaml",
    "stages",
    "src",
    ".dvc/config",
    ".dvcignore",
    "reports/.gitignore",
    ".gitignore",
    "runs/README.md",
]
pytestmark = pytest.mark.slow

TINY = {
    "seed": 3,
    "lr": 0.003,
    "loss": "combined",
    "epochs": 2,
    "batch_size": 8,
    "data": {"source": "synthetic", "synthetic": {"patients": 6, "slices": 8, "size": 64, "seed": 1}},
    "augment": {"image_size": 32},
    "model": {"encoder": "resnet18", "encoder_depth": 3, "decoder_channels": [32, 16, 8]},
    "train": {"schedule": "constant", "keep": "best_val"},  # what the tests were written for
    "run": {"overlay_every": 1, "overlay_slices": 2, "threads": 1},
    "sweeps": {
        "wbce": {"loss": "wbce"},
        "dice": {"loss": "dice"},
        "lr_low": {"loss": "combined", "lr": 0.001, "epochs": 3},
    },
}


def tiny_params() -> dict:
    """A full params file (DVC needs every key it tracks): the defaults with TINY composed on."""
    return compose_params(TINY)


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def run_queue(root: Path, env: dict[str, str], timeout: int = 600, workers: int = 1) -> str:
    """`dvc queue start -j WORKERS`, then wait until nothing is queued or running; `dvc queue status` at the end."""
    run(["dvc", "queue", "start", "-j", str(workers)], root, env)
    deadline = time.time() + timeout
    while True:
        status = run(["dvc", "queue", "status"], root, env).stdout
        if ("Queued" not in status and "Running" not in status) or time.time() > deadline:
            return status
        time.sleep(5)


def project_env(**extra: str) -> dict[str, str]:
    """The environment of a project copy's commands: no store or DVC state of ours, this venv first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "AWS_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return (
        env
        | {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
        | extra
    )


def make_project(root: Path, env: dict[str, str], params: dict) -> None:
    """A git repository at ``root`` with the project's pipeline (dvc.yaml, stages, src) and ``params``."""
    for name in COPIED:
        source, target = PROJECT / name, root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, target)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "tiny project"], root, env)


def wait_for(url: str, process: subprocess.Popen, timeout: float, log: Path | None = None) -> None:
    """Until ``url`` answers; fails when ``process`` exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            shown = log.read_text()[-2000:] if log is not None else ""
            assert process.poll() is None and time.monotonic() < deadline, f"{url} did not come up\n{shown}"
            time.sleep(0.5)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    env = project_env()
    make_project(root, env, tiny_params())
    first = run(["dvc", "repro"], root, env)
    second = run(["dvc", "repro"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "lock"], root, env)
    return {"root": root, "env": env, "first": first, "second": second}


def mlflow_runs(root: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("glioseg")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    # Evaluations with other inference settings are nested runs (tracking.log_evaluation): not trainings.
    return client, experiment, [run for run in runs if "mlflow.parentRunId" not in run.data.tags]


def test_repro_writes_every_output(project):
    root = project["root"]
    for path in [
        "data/raw/manifest.csv",
        "data/labels.csv",
        "data/removed.csv",
        "data/split.csv",
        "data/cache/slices.npz",
        "data/augment.json",
        "data/augment_preview.png",
        "models/model.pt",
        "models/train.json",
        "models/history.csv",
        "metrics/test.json",
        "reports/report.md",
        "reports/figures/learning_curves.png",
        "reports/figures/comparison.png",
        "reports/evaluation/per_slice.csv",
        "reports/evaluation/per_patient.csv",
    ]:
        assert (root / path).is_file(), path
    labels_rows = (root / "data/labels.csv").read_text().count("\n") - 1
    assert labels_rows == 6 * 8
    history = (root / "models/history.csv").read_text().splitlines()
    assert len(history) == 1 + TINY["epochs"]
    test = json.loads((root / "metrics/test.json").read_text())
    assert 0.0 <= test["test"]["dice_patient_mean"] <= 1.0
    assert test["test"]["patients"] >= 1


def test_second_repro_does_nothing(project):
    assert "up to date" in project["second"].stdout.lower() or "didn't change" in project["second"].stdout


def changed_stages(root: Path, env: dict[str, str]) -> set[str]:
    """The stages `dvc status` lists as changed."""
    return set(json.loads(run(["dvc", "status", "--json"], root, env).stdout or "{}"))


SWEEPS = sorted(TINY["sweeps"])


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("pipeline/stages/download.py", {"download"}),
        ("data/clean.py", {"clean"}),
        ("data/labels.py", {"labels"}),
        ("data/split.py", {"split"}),
        ("data/build.py", {"cache"}),
        ("pipeline/stages/augment.py", {"augment"}),
        ("training/loop.py", {"train", *(f"sweep_train@{name}" for name in SWEEPS)}),
        ("inference/postprocess.py", {"evaluate", *(f"sweep_evaluate@{name}" for name in SWEEPS)}),
        ("pipeline/stages/report.py", {"report"}),
    ],
)
def test_editing_a_module_changes_exactly_the_stages_that_import_it(project, module, expected):
    root, env = project["root"], project["env"]
    path = root / "src/glioseg" / module
    original = path.read_bytes()
    try:
        path.write_bytes(original + b"\n# edited\n")
        assert changed_stages(root, env) == expected
    finally:
        path.write_bytes(original)
    assert changed_stages(root, env) == set()


@contextlib.contextmanager
def edited_params(root: Path):
    """Yields edit(key=value, ...), which writes params.yaml with those keys changed (a dict value
    updates that section); the original file is back on leaving."""
    params_file = root / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)

    def edit(**changes) -> None:
        for key, value in changes.items():
            params[key] = {**params[key], **value} if isinstance(value, dict) else value
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))

    try:
        yield edit
    finally:
        params_file.write_text(original)


def test_an_inference_setting_reruns_evaluation_and_the_report_never_training(project):
    root, env = project["root"], project["env"]
    try:
        with edited_params(root) as edit:
            # check_params validates every edit of params.yaml; its stamp never changes, so it re-runs nothing.
            edit(run={"overlay_every": 7, "threads": 2})
            assert changed_stages(root, env) == {"check_params"}
            edit(inference={"tta": True})
            assert changed_stages(root, env) == {
                "check_params",
                "evaluate",
                *(f"sweep_evaluate@{name}" for name in SWEEPS),
            }
            output = run(["dvc", "repro"], root, env).stdout
            ran = {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}
            assert ran == {"check_params", "evaluate", "report", *(f"sweep_evaluate@{name}" for name in SWEEPS)}
            metrics = json.loads((root / "metrics/test.json").read_text())
            assert metrics["test"]["protocol"]["inference"]["tta"] is True
            assert metrics["test"]["protocol"]["training_kernels"] == kernel_name(torch.device("cpu"))
    finally:
        run(["dvc", "repro"], root, env)
    assert changed_stages(root, env) == set()


@pytest.mark.parametrize("data", [{"context": 1}, {"window": [1, 99]}], ids=["context", "window"])
def test_context_and_window_rebuild_the_cache_and_retrain_but_never_download(project, data):
    root, env = project["root"], project["env"]
    with edited_params(root) as edit:
        edit(data=data)
        assert changed_stages(root, env) == {
            "check_params",
            "cache",
            "train",
            *(f"sweep_train@{name}" for name in SWEEPS),
        }
    assert changed_stages(root, env) == set()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"lr": float("inf")}, "error: params.yaml: key 'lr': Input should be a finite number (got inf)"),
        ({"epoch": 3}, "error: params.yaml: unknown key 'epoch'"),
        ({"epochs": True}, "error: params.yaml: key 'epochs': expected a number, not true/false"),
    ],
)
def test_a_bad_param_stops_repro_before_any_output_is_removed(project, edit, message):
    root, env = project["root"], project["env"]
    kept = {
        name: (root / name).read_bytes()
        for name in ("models/train.json", "models/history.csv", "models/model.pt", "metrics/test.json")
    }
    with edited_params(root) as edit_params:
        edit_params(**edit)
        failed = subprocess.run(["dvc", "repro"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert failed.returncode != 0
        assert message in failed.stdout + failed.stderr
        assert "Running stage 'train'" not in failed.stdout
        assert {name: (root / name).read_bytes() for name in kept} == kept
    # Only check_params' stamp is back (run again, or restored from DVC's run cache); nothing else runs.
    output = run(["dvc", "repro"], root, env).stdout
    assert [line for line in output.splitlines() if line.startswith("Running stage")] in (
        [],
        ["Running stage 'check_params':"],
    ), output
    assert changed_stages(root, env) == set()


KEPT = ("models/train.json", "models/history.csv", "models/model.pt", "metrics/test.json", "data/raw/manifest.csv")


LR_ERROR = "error: params.yaml: key 'lr': Input should be greater than 0 (got -1)"


@pytest.mark.parametrize(
    ("command", "edit", "message"),
    [
        (["dvc", "repro", "-s", "train"], {"lr": -1}, LR_ERROR),
        (["dvc", "repro", "--downstream", "train"], {"lr": -1}, LR_ERROR),
        (
            ["dvc", "repro", "-s", "download"],
            {"data": {"patients": 0}},
            "error: params.yaml: key 'data.patients': Input should be greater than or equal to 1 (got 0)",
        ),
        (["dvc", "exp", "run", "-S", "lr=-1"], {}, LR_ERROR),
    ],
    ids=["single-stage", "downstream", "single-data-stage", "exp-run"],
)
def test_a_bad_param_removes_nothing_whichever_stages_run(project, command, edit, message):
    root, env = project["root"], project["env"]
    kept = {name: (root / name).read_bytes() for name in KEPT}
    with edited_params(root) as edit_params:
        edit_params(**edit)
        failed = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert failed.returncode != 0
        assert message in failed.stdout + failed.stderr
        assert {name: (root / name).read_bytes() for name in kept} == kept
    assert changed_stages(root, env) == set()


def test_a_bad_param_in_a_queued_experiment_fails_it_and_leaves_the_workspace(project):
    root, env = project["root"], project["env"]
    kept = {name: (root / name).read_bytes() for name in KEPT}
    run(["dvc", "exp", "run", "--queue", "-S", "lr=-1", "-n", "badlr"], root, env)
    assert "Failed" in run_queue(root, env)
    log = subprocess.run(["dvc", "queue", "logs", "badlr"], cwd=root, env=env, capture_output=True, text=True)
    assert "error: params.yaml: key 'lr': Input should be greater than 0 (got -1)" in log.stdout + log.stderr
    assert {name: (root / name).read_bytes() for name in kept} == kept
    run(["dvc", "queue", "remove", "--failed"], root, env)


def test_a_source_inside_an_output_is_refused_before_anything_is_removed(project):
    root, env = project["root"], project["env"]
    patient = root / "data/raw/kaggle_3m/MINE_2020"
    patient.mkdir()
    (patient / "MINE_2020_1.tif").write_bytes(b"a user's own scan")
    try:
        with edited_params(root) as edit_params:
            edit_params(data={"source": "data/raw/kaggle_3m"})
            failed = subprocess.run(["dvc", "repro"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
            assert failed.returncode != 0
            assert (
                "error: params.yaml: key 'data.source': data/raw/kaggle_3m overlaps data/raw, an output of "
                "the download stage"
            ) in failed.stdout + failed.stderr
            assert "Running stage 'download'" not in failed.stdout
            assert (patient / "MINE_2020_1.tif").read_bytes() == b"a user's own scan"
    finally:
        shutil.rmtree(patient)
    assert changed_stages(root, env) == set()


def test_report_tables_name_their_runs(project):
    root = project["root"]
    report = (root / "reports/report.md").read_text()
    assert "Table 1: loss configuration" in report and "Table 2: learning rate" in report
    _, _, runs = mlflow_runs(root)
    for run in runs:
        assert run.info.run_id in report
    tables = json.loads((root / "reports/figures/tables.json").read_text())
    assert [row["loss"] for row in tables["loss"]] == ["weighted BCE", "Dice", "combined (wBCE + Dice)"]
    assert all(isinstance(row["test Dice"], float) for row in tables["loss"])
    assert [row["lr"] for row in tables["lr"]] == ["0.001", "0.003"]


def test_one_mlflow_run_per_training_with_everything_logged(project):
    client, experiment, runs = mlflow_runs(project["root"])
    assert sorted(run.info.run_name for run in runs) == ["sweep-dice", "sweep-lr_low", "sweep-wbce", "train"]
    main = next(run for run in runs if run.info.run_name == "train")
    assert main.data.params["lr"] == "0.003"
    assert main.data.params["model.encoder"] == "resnet18"
    assert main.data.tags["data_manifest_sha256"] != "missing"
    assert len(main.data.tags["git_commit"]) == 40
    history = client.get_metric_history(main.info.run_id, "val_dice")
    assert [m.step for m in history] == [1, 2]
    assert "test_dice_patient_mean" in main.data.metrics
    artifacts = {a.path for a in client.list_artifacts(main.info.run_id)}
    assert {"augment", "overlays", "curves", "evaluation"} <= artifacts
    overlays = [a.path for a in client.list_artifacts(main.info.run_id, "overlays")]
    assert overlays == ["overlays/val_epoch_001.png", "overlays/val_epoch_002.png"]
    assert experiment.artifact_location.startswith((project["root"] / "mlartifacts").as_uri())


def test_exp_run_set_param_adds_a_run(project):
    root, env = project["root"], project["env"]
    run(["dvc", "exp", "run", "evaluate", "-S", "lr=5e-5"], root, env)
    _, _, runs = mlflow_runs(root)
    new = [r for r in runs if r.data.tags.get("dvc_experiment")]
    assert len(new) == 1
    assert float(new[0].data.params["lr"]) == pytest.approx(5e-5)
    shown = run(["dvc", "exp", "show", "--json"], root, env).stdout
    assert "5e-05" in shown


def test_queued_and_temp_experiments_land_in_the_repo_store(project):
    root, env = project["root"], project["env"]
    _, _, before = mlflow_runs(root)
    # Two workers at once on the default SQLite store: both runs land, none is left RUNNING.
    run(["dvc", "exp", "run", "evaluate", "--queue", "-S", "loss=wbce"], root, env)
    run(["dvc", "exp", "run", "evaluate", "--queue", "-S", "loss=dice", "-S", "lr=0.002"], root, env)
    status = run_queue(root, env, workers=2)
    assert status.count("Success") == 2, status
    run(["dvc", "exp", "run", "evaluate", "--temp", "-S", "loss=dice"], root, env)
    _, _, after = mlflow_runs(root)
    new = [r for r in after if r.info.run_id not in {b.info.run_id for b in before}]
    assert sorted(r.data.params["loss"] for r in new) == ["dice", "dice", "wbce"]
    assert "0.002" in {r.data.params["lr"] for r in new}
    assert {r.info.status for r in after} == {"FINISHED"}
    assert not list((root / ".dvc" / "tmp").rglob("mlflow.db"))
    shown = exp_show_metrics(root, env)
    for loss in ("wbce", "dice"):
        dice = [m["test"]["dice_patient_mean"] for shown_loss, m in shown if shown_loss == loss and m]
        assert dice and all(0.0 <= value <= 1.0 for value in dice), (loss, shown)


def exp_show_metrics(root: Path, env: dict[str, str]) -> list[tuple[str, dict | None]]:
    """(loss, metrics/test.json) of every row of `dvc exp show --json`: the workspace, commits, experiments."""
    rows = []

    def walk(node):
        if isinstance(node, dict):
            data = node.get("data")
            if isinstance(data, dict) and "params" in data:
                params = (data["params"].get("params.yaml") or {}).get("data") or {}
                metrics = ((data.get("metrics") or {}).get("metrics/test.json") or {}).get("data")
                rows.append((params.get("loss"), metrics))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(run(["dvc", "exp", "show", "--json"], root, env).stdout))
    return rows


def test_queued_cross_validation_is_summarised_over_every_patient(project):
    """The k-fold recipe of docs/how-to/cross-validation.md at k = 2: both folds queued, run, cv-summary."""
    root, env = project["root"], project["env"]
    run(["dvc", "exp", "run", "evaluate", "--queue", "-S", "split.folds=2", "-S", "split.fold=0,1"], root, env)
    status = run_queue(root, env)
    _, _, runs = mlflow_runs(root)
    folds = {r.data.params["split.fold"]: r for r in runs if r.data.params.get("split.folds") == "2"}
    assert sorted(folds) == ["0", "1"], status
    assert sum(r.data.metrics["test_patients"] for r in folds.values()) == TINY["data"]["synthetic"]["patients"]
    out = run([sys.executable, "-m", "glioseg.cli", "cv-summary", "--folds", "2", "--csv", "cv.csv"], root, env)
    assert folds["0"].info.run_id in out.stdout and folds["1"].info.run_id in out.stdout
    table = {row.split(",")[0]: row.split(",") for row in (root / "cv.csv").read_text().splitlines()}
    assert "all 6 patients" in table


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_mlflow_server_serves_runs_metrics_and_overlays(project):
    root = project["root"]
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{base}/health", server, timeout=120)
        _, experiment, _ = mlflow_runs(root)
        request = urllib.request.Request(
            f"{base}/api/2.0/mlflow/runs/search",
            data=json.dumps({"experiment_ids": [experiment.experiment_id], "max_results": 100}).encode(),
            headers={"Content-Type": "application/json"},
        )
        found = json.load(urllib.request.urlopen(request, timeout=30))["runs"]
        main = next(r for r in found if r["info"]["run_name"] == "train")
        metric_keys = {m["key"] for m in main["data"]["metrics"]}
        assert {"train_loss", "val_dice", "val_iou", "test_dice_patient_mean"} <= metric_keys
        listing = json.load(
            urllib.request.urlopen(
                f"{base}/api/2.0/mlflow/artifacts/list?run_id={main['info']['run_id']}&path=overlays", timeout=30
            )
        )
        assert [f["path"] for f in listing["files"]] == ["overlays/val_epoch_001.png", "overlays/val_epoch_002.png"]
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def test_exp_run_dataset_brats_runs_every_stage_on_nifti(project, tmp_path):
    """Last in this module: it leaves the workspace on dataset brats."""
    root, env = project["root"], project["env"]
    run(["dvc", "exp", "run", "-S", "dataset=brats"], root, env, timeout=900)
    cases = sorted((root / "data/raw/brats").iterdir())
    assert len(cases) == 6 and not (root / "data/raw/kaggle_3m").exists()
    test = json.loads((root / "metrics/test.json").read_text())["test"]
    assert set(test["regions"]) == {"whole_tumour", "tumour_core", "enhancing_tumour"}
    report = (root / "reports/report.md").read_text()
    assert "Dataset brats" in report and "| enhancing_tumour" in report and "Table 1: loss configuration" in report
    _, _, runs = mlflow_runs(root)
    brats_runs = [r for r in runs if r.data.params.get("dataset") == "brats"]
    assert sorted(r.info.run_name for r in brats_runs) == ["sweep-dice", "sweep-lr_low", "sweep-wbce", "train"]
    assert (
        "test_regions.whole_tumour.dice_patient_mean"
        in next(r for r in brats_runs if r.info.run_name == "train").data.metrics
    )
    out = tmp_path / "pred"
    run([sys.executable, "-m", "glioseg.cli", "predict", str(cases[0]), "--out", str(out)], root, env)
    assert (out / cases[0].name / f"{cases[0].name}_pred.nii.gz").is_file()
