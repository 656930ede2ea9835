"""The ``glioseg`` command: pipeline stages, the metrics gate, cross-validation summaries and the MLflow UI.

User errors (:class:`~glioseg.errors.GliosegError`) print as one ``error:`` line with exit code 2.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from glioseg.errors import GliosegError

app = typer.Typer(
    help="glioseg: reproducible brain-tumour segmentation (DVC + MLflow).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


class Stage(str, Enum):
    download = "download"
    clean = "clean"
    labels = "labels"
    split = "split"
    cache = "cache"
    augment = "augment"
    train = "train"
    evaluate = "evaluate"
    sweep = "sweep"
    report = "report"


DATA_STAGES = ("download", "clean", "labels", "split", "cache", "augment")


def user_errors(command):
    """Turn a GliosegError into a one-line message and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except GliosegError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def run_stage(stage: str, sweep: str | None = None, params_file: Path | None = None) -> dict:
    """Load and validate params, run one pipeline stage, return its summary.

    Modules are imported per stage: the data stages should not pay for importing MLflow.
    """
    from glioseg.config import load_params

    params = load_params(params_file)
    if stage in DATA_STAGES:
        from glioseg import steps

        return getattr(steps, stage)(params)
    if stage == "report":
        from glioseg.report import build_report

        return {"report": str(build_report(params))}
    from glioseg import experiment, paths

    if stage == "train":
        return experiment.train_run(params, "train", paths.MODELS)
    if stage == "evaluate":
        return experiment.evaluate_stage(params)
    if not sweep:
        raise GliosegError("the sweep stage needs a sweep name: glioseg stage sweep NAME")
    return experiment.sweep_run(params, sweep)


@app.command()
@user_errors
def stage(
    name: Annotated[Stage, typer.Argument(help="the pipeline stage to run")],
    sweep: Annotated[str | None, typer.Argument(help="for 'sweep': the name under `sweeps` in params.yaml")] = None,
    params_file: Annotated[Path | None, typer.Option("--params", help="params file (default params.yaml)")] = None,
) -> None:
    """Run one pipeline stage (what `dvc repro` calls through stages/*.py)."""
    summary = run_stage(name.value, sweep, params_file)
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command("check-params")
@user_errors
def check_params(params_file: Annotated[Path, typer.Argument()] = Path("params.yaml")) -> None:
    """Validate a params file and print it with defaults filled in."""
    from glioseg.config import load_params

    typer.echo(json.dumps(load_params(params_file).model_dump(), indent=2))


@app.command("check-metrics")
@user_errors
def check_metrics_command(
    metrics: Annotated[Path, typer.Argument(help="metrics JSON of the new run")],
    baseline: Annotated[Path, typer.Option(help="committed baseline metrics JSON")],
    rules: Annotated[Path, typer.Option(help="YAML of per-metric floors / tolerances")],
) -> None:
    """Compare metrics with a baseline; exit 1 when any metric falls below its floor."""
    from glioseg.check_metrics import check_metrics

    passed, table = check_metrics(metrics, baseline, rules)
    typer.echo(table)
    typer.echo("metrics check: " + ("passed" if passed else "FAILED"))
    if not passed:
        raise typer.Exit(1)


@app.command("cv-summary")
@user_errors
def cv_summary_command(
    folds: Annotated[int, typer.Option(help="the k of split.folds the runs were trained with")] = 5,
    run_name: Annotated[str, typer.Option(help="MLflow run name: train, or sweep-NAME")] = "train",
    csv: Annotated[Path | None, typer.Option(help="also write the table to this CSV file")] = None,
) -> None:
    """Summarise a k-fold cross-validation by patient: each fold's test metrics, their mean and sd."""
    from glioseg.crossval import cv_summary, to_markdown
    from glioseg.io import write_csv

    table = cv_summary(folds, run_name)
    typer.echo(to_markdown(table))
    if csv is not None:
        write_csv(csv, table)


@app.command("predict")
@user_errors
def predict_command(
    source: Annotated[Path, typer.Argument(help="a .tif slice, a kaggle_3m patient folder, or a folder of them")],
    out: Annotated[Path, typer.Option(help="output folder (created; replaced if it holds an earlier prediction)")],
    model: Annotated[str, typer.Option(help="model file, runs:/<run id> or models:/<name>/<version>")] = "models/model.pt",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
) -> None:
    """Segment new scans: masks (<slice>_mask.tif), overlays and tumour areas (areas.csv, cases.csv)."""
    from glioseg.predict import predict

    table = predict(source, model, out, device)
    typer.echo(f"{len(table)} slices, {int((table['tumour_pixels'] > 0).sum())} with tumour -> {out}")


@app.command()
@user_errors
def serve(
    model: Annotated[str, typer.Option(help="model file, runs:/<run id> or models:/<name>/<version>")] = "models/model.pt",
    data: Annotated[Path | None, typer.Option(
        help="folder of cases to choose from [default: data/raw/kaggle_3m, or data/raw/brats for a BraTS model]",
        show_default=False)] = None,
    port: Annotated[int, typer.Option(help="port on 127.0.0.1")] = 8501,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
) -> None:
    """The viewer: a web page on 127.0.0.1 to browse a case's slices with predicted and true tumour."""
    from glioseg.app import streamlit_command

    raise typer.Exit(subprocess.call(streamlit_command(model, data, port, device), env=os.environ.copy()))


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="port on 127.0.0.1")] = 5000,
) -> None:
    """Browse the runs: `mlflow ui` on 127.0.0.1 over the project's store."""
    from glioseg.tracking import artifact_location, tracking_uri

    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri(),
               "--default-artifact-root", artifact_location(), "--host", "127.0.0.1", "--port", str(port)]
    raise typer.Exit(subprocess.call(command, env=os.environ.copy()))


if __name__ == "__main__":
    app()
