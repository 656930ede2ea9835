import pandas as pd
import pytest
from typer.testing import CliRunner

from glioseg import metrics
from glioseg.cli import app
from glioseg.errors import DataError
from glioseg.evaluation.crossval import summarise
from glioseg.tracking import store as tracking
from glioseg.tracking.folds import complete_folds

# The tags of a run whose metrics come from an evaluation with its model's own inference settings.
SERVED = {tracking.INFERENCE_KEY: "k", tracking.MODEL_INFERENCE_KEY: "k"}


def fold_run(fold: int, dice: float, patients: int, start: int, folds: int = 3, **params) -> dict:
    """One row as ``mlflow.search_runs`` returns it for an evaluated fold run."""
    return {
        "run_id": f"run-{fold}-{start}",
        "start_time": pd.Timestamp("2026-11-23") + pd.Timedelta(minutes=start),
        "tags.mlflow.runName": params.pop("run_name", "train"),
        "params.split.folds": str(folds),
        "params.split.fold": str(fold),
        "params.lr": params.pop("lr", "0.001"),
        "params.run.threads": params.pop("threads", "0"),
        "metrics.test_dice_patient_mean": dice,
        "metrics.test_iou_patient_mean": dice / 2,
        "metrics.test_dice_pooled": dice + 0.05,
        "metrics.test_patients": float(patients),
        **{f"tags.{key}": value for key, value in SERVED.items()},
        **params,
    }


def test_summary_gives_fold_mean_sd_and_the_mean_over_all_patients():
    runs = pd.DataFrame([fold_run(0, 0.9, 3, 1), fold_run(1, 0.6, 2, 2), fold_run(2, 0.3, 1, 3)])
    table = summarise(complete_folds(runs, 3, "train")).set_index("fold")
    assert list(table.index) == ["0", "1", "2", "mean over folds", "sd over folds", "all 6 patients"]
    assert table.loc["mean over folds", "test Dice per patient"] == pytest.approx(0.6)
    assert table.loc["sd over folds", "test Dice per patient"] == pytest.approx(0.3)
    # Out of fold: every patient once, so fold means weigh by their patient counts (2.7 + 1.2 + 0.3) / 6.
    assert table.loc["all 6 patients", "test Dice per patient"] == pytest.approx(0.7)
    assert table.loc["all 6 patients", "test IoU per patient"] == pytest.approx(0.35)
    assert pd.isna(table.loc["all 6 patients", "test Dice pooled"])  # pooled Dice does not average over patients
    assert table.loc["mean over folds", "test Dice pooled"] == pytest.approx(0.65)
    assert list(table.loc[["0", "1", "2"], "MLflow run"]) == ["run-0-1", "run-1-2", "run-2-3"]


def test_the_newest_run_of_each_fold_of_the_newest_complete_configuration_counts():
    runs = pd.DataFrame(
        [
            fold_run(0, 0.5, 2, 1),
            fold_run(1, 0.5, 2, 2),
            fold_run(2, 0.5, 2, 3),
            fold_run(1, 0.8, 2, 10),  # a rerun of fold 1: replaces the first
            fold_run(0, 0.1, 2, 20, lr="0.01"),  # a newer configuration, incomplete
            fold_run(0, 0.2, 2, 21, run_name="sweep-dice"),  # another run name
            fold_run(2, 0.3, 2, 22, folds=5),  # another k
            {**fold_run(2, 0.4, 2, 23), "metrics.test_dice_patient_mean": float("nan")},  # not evaluated yet
        ]
    )
    chosen = complete_folds(runs, 3, "train")
    assert list(chosen["run_id"]) == ["run-0-1", "run-1-10", "run-2-3"]


def test_run_settings_such_as_threads_do_not_split_a_configuration():
    runs = pd.DataFrame(
        [fold_run(0, 0.5, 2, 1, threads="1"), fold_run(1, 0.5, 2, 2, threads="2"), fold_run(2, 0.5, 2, 3)]
    )
    assert len(complete_folds(runs, 3, "train")) == 3


def test_missing_folds_are_named():
    runs = pd.DataFrame([fold_run(0, 0.5, 2, 1), fold_run(2, 0.5, 2, 2)])
    with pytest.raises(DataError, match="has folds 0, 2, missing 1"):
        complete_folds(runs, 3, "train")
    with pytest.raises(DataError, match="no evaluated run named 'sweep-dice' with split.folds=3"):
        complete_folds(runs, 3, "sweep-dice")
    with pytest.raises(DataError, match="no evaluated run"):
        complete_folds(pd.DataFrame(), 3, "train")


def test_brats_regions_get_their_own_per_case_columns():
    runs = pd.DataFrame(
        [
            {**fold_run(f, 0.5, 1, f, folds=2), "metrics.test_regions.whole_tumour.dice_patient_mean": 0.7 + f / 10}
            for f in range(2)
        ]
    )
    table = summarise(complete_folds(runs, 2, "train")).set_index("fold")
    assert table.loc["all 2 patients", "test Dice per patient (whole_tumour)"] == pytest.approx(0.75)


def test_cv_summary_command_reads_the_mlflow_store(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment("glioseg", artifact_location=(tmp_path / "artifacts").as_uri())
    ids = []
    for fold, (dice, patients) in enumerate([(0.8, 3), (0.7, 2)]):
        with mlflow.start_run(experiment_id=experiment, run_name="train") as run:
            mlflow.log_params({"split.folds": 2, "split.fold": fold, "lr": 0.001})
            mlflow.log_metrics({"test_dice_patient_mean": dice, "test_patients": patients})
            mlflow.set_tags(SERVED)
            ids.append(run.info.run_id)
    with mlflow.start_run(experiment_id=experiment, run_name="train"):
        mlflow.log_params({"split.folds": 0, "split.fold": 0, "lr": 0.001})
        mlflow.log_metrics({"test_dice_patient_mean": 0.1, "test_patients": 1})
        mlflow.set_tags(SERVED)

    out = CliRunner().invoke(app, ["cv-summary", "--folds", "2", "--csv", str(tmp_path / "cv.csv")])
    assert out.exit_code == 0, out.output
    assert ids[0] in out.output and ids[1] in out.output and "all 5 patients" in out.output
    table = pd.read_csv(tmp_path / "cv.csv").set_index("fold")
    assert table.loc["all 5 patients", "test Dice per patient"] == pytest.approx(0.76)
    assert table.loc["mean over folds", "test Dice per patient"] == pytest.approx(0.75)

    missing = CliRunner().invoke(app, ["cv-summary", "--folds", "3"])
    assert missing.exit_code == 2
    assert "error: the MLflow store has no evaluated run named 'train' with split.folds=3" in missing.output


def test_leave_one_site_out_runs_are_summarised_per_site_with_intervals(tmp_path, monkeypatch):
    """One run per site, found by split.by=site; each row names its site and interval; the overall
    interval is bootstrapped over every patient from the per-patient tables the runs logged."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment("glioseg", artifact_location=(tmp_path / "artifacts").as_uri())
    patients = {"AA": [1.0, 0.8], "AB": [0.6, 0.4, 0.2]}
    for fold, (site, dice) in enumerate(patients.items()):
        with mlflow.start_run(experiment_id=experiment, run_name="train"):
            mlflow.log_params({"split.by": "site", "split.folds": 0, "split.fold": fold, "lr": 0.001})
            mlflow.log_metrics(
                {
                    "test_dice_patient_mean": sum(dice) / len(dice),
                    "test_patients": len(dice),
                    "test_ci95.dice_patient_mean.low": min(dice),
                    "test_ci95.dice_patient_mean.high": max(dice),
                }
            )
            mlflow.set_tags({"test_site": site, "split_sites": "2", **SERVED})
            table = pd.DataFrame(
                {"region": "tumour", "patient": [f"TCGA_{site}_{i}" for i in range(len(dice))], "dice": dice}
            )
            mlflow.log_text(table.to_csv(index=False), tracking.PER_PATIENT_ARTIFACT.format(subset="test"))

    out = CliRunner().invoke(app, ["cv-summary", "--by", "site", "--csv", str(tmp_path / "sites.csv")])
    assert out.exit_code == 0, out.output
    table = pd.read_csv(tmp_path / "sites.csv").set_index("fold")
    assert table.loc[["0", "1"], "test site"].tolist() == ["AA", "AB"]
    assert table.loc["0", "Dice per patient 95% CI low"] == pytest.approx(0.8)
    assert table.loc["all 5 patients", "test Dice per patient"] == pytest.approx(0.6)
    interval = metrics.mean_interval([1.0, 0.8, 0.6, 0.4, 0.2])
    assert table.loc["all 5 patients", "Dice per patient 95% CI low"] == pytest.approx(interval["low"])
    assert table.loc["all 5 patients", "Dice per patient 95% CI high"] == pytest.approx(interval["high"])
    assert pd.isna(table.loc["mean over folds", "Dice per patient 95% CI low"])  # intervals are not averaged

    bad = CliRunner().invoke(app, ["cv-summary", "--by", "hospital"])
    assert bad.exit_code == 2 and "cross-validation by 'hospital': expected one of patient, site" in bad.output
