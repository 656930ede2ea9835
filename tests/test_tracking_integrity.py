"""What the MLflow store says stays true: a run's metrics are the evaluation its model reproduces, a
store migrated into itself is refused however it is named, and a model whose run is elsewhere is
reported in one line."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from glioseg import paths
from glioseg.cli import app
from glioseg.config.schema import parse_params
from glioseg.config.sections import InferenceParams
from glioseg.errors import DataError
from glioseg.evaluation.crossval import cv_summary
from glioseg.evaluation.promote import promote, run_metrics
from glioseg.pipeline.runner import DATA_STAGES, stage_function
from glioseg.pipeline.stages import evaluate as scoring
from glioseg.pipeline.stages import train as experiment
from glioseg.tracking import store as tracking
from glioseg.tracking.migrate import migrate, store_identity
from tests.conftest import TINY_PARAMS

PARAMS = {**TINY_PARAMS, "epochs": 1, "data": {"synthetic": {"patients": 6, "slices": 8, "size": 64, "seed": 1}}}
OTHER = {"threshold": 0.01}  # far from the trained 0.3: its numbers differ


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training in its own folder and store, registered as glioseg-lgg version 1."""
    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        patch.delenv("DVC_ROOT", raising=False)
        params = parse_params(PARAMS)
        for stage in DATA_STAGES:
            stage_function(stage)(params)
        summary = experiment.run(params)
    return {"root": root, "params": params, "run_id": summary["mlflow_run_id"]}


@pytest.fixture
def project(trained, monkeypatch):
    monkeypatch.chdir(trained["root"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{trained['root'] / 'mlflow.db'}")
    monkeypatch.delenv("DVC_ROOT", raising=False)
    return trained


def evaluated(**inference) -> dict:
    """The test summary of models/model.pt evaluated with these inference settings."""
    return scoring.evaluate_run(paths.MODEL, ("test",), None, parse_params({**PARAMS, "inference": inference}))["test"]


def nested_runs(tracker, run_id: str) -> list:
    parent = tracker.get_run(run_id)
    return tracker.search_runs([parent.info.experiment_id], f"tags.`{tracking.PARENT_RUN}` = '{run_id}'")


def test_an_evaluation_with_other_settings_is_a_nested_run_and_the_model_run_keeps_its_own(project, tmp_path):
    """The issue: evaluate at another threshold, then promote: the run must not hold that evaluation
    as its own, and promote judges only an evaluation with the settings the model carries."""
    run_id, tracker = project["run_id"], tracking.client()
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"test.dice_patient_mean": {"min": 0.0}}))

    other = evaluated(**OTHER)
    assert "test_dice_patient_mean" not in tracker.get_run(run_id).data.metrics
    [child] = nested_runs(tracker, run_id)
    assert child.data.params["inference.threshold"] == "0.01"
    assert child.data.tags[tracking.INFERENCE_KEY] == tracking.inference_key(
        InferenceParams(**OTHER).model_dump(mode="json")
    )
    assert child.data.metrics["test_dice_patient_mean"] == pytest.approx(other["dice_patient_mean"])
    with pytest.raises(
        DataError,
        match=rf"^glioseg-lgg version 1: its run {run_id} has no evaluation with the "
        r"inference settings its model carries",
    ):
        promote(tracker, "glioseg-lgg", str(rules))

    own = evaluated()
    assert own["dice_pooled"] != pytest.approx(other["dice_pooled"])  # else this test proves nothing
    evaluated(**OTHER)  # back to the other settings (dvc checkout restores their outputs): the run keeps its own
    run = tracker.get_run(run_id)
    assert run.data.metrics["test_dice_pooled"] == pytest.approx(own["dice_pooled"])
    assert run.data.tags["inference.threshold"] == "0.3"
    assert len(nested_runs(tracker, run_id)) == 2
    assert run_metrics(tracker, run_id, "the run")["test"]["dice_pooled"] == pytest.approx(own["dice_pooled"])
    assert promote(tracker, "glioseg-lgg", str(rules)).promoted


def test_a_model_whose_run_is_in_another_store_is_one_line_naming_both(project, tmp_path, monkeypatch):
    other_store = f"sqlite:///{tmp_path / 'other.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other_store)
    (project["root"] / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    out = CliRunner().invoke(app, ["stage", "evaluate"])
    assert out.exit_code == 2, out.output
    assert "Traceback" not in out.output
    assert [line for line in out.output.splitlines() if "error" in line.lower()] == [
        f"error: {paths.MODEL}: its MLflow run {project['run_id']} is not in the tracking store {other_store}; "
        "set MLFLOW_TRACKING_URI to the store that trained it, or train it again to log it here"
    ]


def fold_store(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracking.client().create_experiment("glioseg", artifact_location=(tmp_path / "artifacts").as_uri())
    return uri


def fold(fold: int) -> str:
    """A fold run of a 2-fold cross-validation, trained but not evaluated."""
    tracker = tracking.client()
    run = tracker.create_run(tracker.get_experiment_by_name("glioseg").experiment_id, run_name="train")
    for key, value in {"split.folds": "2", "split.fold": str(fold), "lr": "0.001"}.items():
        tracker.log_param(run.info.run_id, key, value)
    tracker.set_terminated(run.info.run_id)
    return run.info.run_id


def log_fold_evaluation(run_id: str, dice: float, settings: dict) -> None:
    """What the evaluate stage logs for a model that carries the default inference settings."""
    own = InferenceParams().model_dump(mode="json")
    tracking.log_evaluation(
        run_id,
        InferenceParams(**settings).model_dump(mode="json"),
        own,
        {"test_dice_patient_mean": dice, "test_patients": 2.0},
        {},
        {},
        {},
    )


def test_cv_summary_takes_each_fold_evaluation_with_its_model_settings_only(tmp_path, monkeypatch):
    fold_store(tmp_path, monkeypatch)
    runs = [fold(0), fold(1)]
    log_fold_evaluation(runs[0], 0.8, {})
    log_fold_evaluation(runs[1], 0.1, OTHER)
    with pytest.raises(
        DataError,
        match=r"has folds 0, missing 1 .*evaluated only with other inference settings "
        r"than its model carries, or by an older glioseg: fold 1 \(run [0-9a-f]+\)",
    ):
        cv_summary(2)
    log_fold_evaluation(runs[1], 0.6, {})
    log_fold_evaluation(runs[0], 0.2, OTHER)
    table = cv_summary(2).set_index("fold")
    assert table.loc[["0", "1"], "test Dice per patient"].tolist() == pytest.approx([0.8, 0.6])
    assert table.loc[["0", "1"], "MLflow run"].tolist() == runs


def test_a_run_evaluated_before_the_settings_were_recorded_is_not_taken_as_its_own():
    """Runs evaluated by an older glioseg: their metrics are the last evaluation's, whatever its settings."""
    from glioseg.tracking.folds import complete_folds

    legacy = pd.DataFrame(
        [
            {
                "run_id": f"r{f}",
                "start_time": pd.Timestamp("2026-01-01"),
                "tags.mlflow.runName": "train",
                "params.split.folds": "2",
                "params.split.fold": str(f),
                "metrics.test_dice_patient_mean": 0.5,
                "metrics.test_patients": 1.0,
            }
            for f in range(2)
        ]
    )
    with pytest.raises(
        DataError,
        match=r"^the MLflow store has no run named 'train' with split.folds=2 evaluated "
        r"with the inference settings its model carries; .*: fold 0 \(run r0\), "
        r"fold 1 \(run r1\)",
    ):
        complete_folds(legacy, 2, "train")


# Migration ---------------------------------------------------------------------------------------


def store_with_runs(uri: str, artifacts, count: int = 2, model: bool = True) -> list[str]:
    """``count`` finished runs in ``uri``'s store, the first registered as glioseg-lgg's next version."""
    tracker = tracking.client(uri)
    found = tracker.get_experiment_by_name("glioseg")
    experiment_id = (
        found.experiment_id if found else tracker.create_experiment("glioseg", artifact_location=artifacts.as_uri())
    )
    ids = []
    for n in range(count):
        run = tracker.create_run(experiment_id, run_name="train")
        tracker.log_metric(run.info.run_id, "val_dice", 0.1 * n)
        tracker.set_terminated(run.info.run_id)
        ids.append(run.info.run_id)
    if model:
        if not tracker.search_registered_models("name='glioseg-lgg'"):
            tracker.create_registered_model("glioseg-lgg")
        tracker.create_model_version("glioseg-lgg", f"runs:/{ids[0]}/checkpoint", run_id=ids[0])
    return ids


def run_count(uri: str) -> int:
    tracker = tracking.client(uri)
    return len(tracker.search_runs([tracker.get_experiment_by_name("glioseg").experiment_id]))


def test_a_store_named_two_ways_is_refused_as_migrated_into_itself(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "store").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "store")
    absolute = f"sqlite:///{tmp_path / 'store/a.db'}"
    store_with_runs(absolute, tmp_path / "artifacts")
    for source, target in [
        ("sqlite:///store/a.db", absolute),
        (absolute, f"sqlite:///{tmp_path / 'link/a.db'}"),
        ("sqlite:///./store/../store/a.db", "sqlite:///link/a.db?timeout=30"),
    ]:
        with pytest.raises(DataError, match=r"^sqlite:///.* and sqlite:///.* are the same store \(sqlite:"):
            migrate(source, target)
    assert run_count(absolute) == 2


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("postgresql+psycopg2://glioseg:secret@DB.example:5432/mlflow", "postgresql://glioseg@db.example/mlflow"),
        ("http://127.0.0.1:5000/", "HTTP://127.0.0.1:5000"),
        ("https://Tracking.example:443/mlflow/", "https://tracking.example/mlflow"),
    ],
)
def test_server_and_database_stores_are_one_store_however_written(one, other):
    assert store_identity(one) == store_identity(other)


def test_stores_that_differ_have_different_identities(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert store_identity("runs") == store_identity(f"file://{tmp_path / 'runs'}") == store_identity("./runs/")
    assert store_identity("postgresql://db/mlflow") != store_identity("postgresql://db/other")
    assert store_identity("http://127.0.0.1:5000") != store_identity("http://127.0.0.1:5001")
    assert store_identity("sqlite:///a.db") != store_identity("sqlite:///b.db")


def test_migrating_back_or_again_under_another_name_copies_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local, team = "sqlite:///local.db", f"sqlite:///{tmp_path / 'team.db'}"
    store_with_runs(local, tmp_path / "local-artifacts")
    store_with_runs(team, tmp_path / "team-artifacts", count=1, model=False)
    assert migrate(local, team).summary()["runs_copied"] == 2
    again = migrate(f"sqlite:///{tmp_path / 'local.db'}", "sqlite:///team.db").summary()
    assert again == {
        "runs_copied": 0,
        "runs_already_there": 2,
        "model_versions_copied": 0,
        "model_versions_already_there": 1,
    }
    back = migrate(team, local).summary()  # the copies are the local runs: only team's own run is new
    assert back["runs_copied"] == 1 and back["runs_already_there"] == 2 and back["model_versions_copied"] == 0
    assert run_count(local) == 3 and run_count(team) == 3


def test_versions_of_two_stores_with_the_same_number_are_both_copied(tmp_path):
    team = f"sqlite:///{tmp_path / 'team.db'}"
    for name in ("alice", "bob"):  # each store's first version is glioseg-lgg/1
        store_with_runs(f"sqlite:///{tmp_path / name}.db", tmp_path / f"{name}-artifacts", count=1)
        assert migrate(f"sqlite:///{tmp_path / name}.db", team).versions_copied == 1
    versions = tracking.client(team).search_model_versions("name='glioseg-lgg'")
    assert len(versions) == 2


def test_nested_evaluation_runs_stay_under_their_copied_parent(tmp_path):
    local, team = f"sqlite:///{tmp_path / 'local.db'}", f"sqlite:///{tmp_path / 'team.db'}"
    [parent] = store_with_runs(local, tmp_path / "artifacts", count=1, model=False)
    tracker = tracking.client(local)
    child = tracker.create_run(
        tracker.get_run(parent).info.experiment_id, run_name="evaluate", tags={tracking.PARENT_RUN: parent}
    )
    tracker.set_terminated(child.info.run_id)
    done = migrate(local, team)
    copied = tracking.client(team).get_run(done.run_ids[child.info.run_id])
    assert copied.data.tags[tracking.PARENT_RUN] == done.run_ids[parent]
