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
from typing import Annotated, get_args

import typer

from glioseg.config.sections import InferenceParams, Postprocess
from glioseg.device import DEVICES
from glioseg.errors import GliosegError
from glioseg.formats import FORMATS
from glioseg.paths import MODEL, raw_cases
from glioseg.pipeline import runner

app = typer.Typer(
    help="glioseg: reproducible brain-tumour segmentation (DVC + MLflow).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts show "[/<run name>]" and such literally, not as Rich markup
)


Stage = Enum("Stage", {name: name for name in runner.STAGES}, type=str)  # type: ignore[misc]  # built from STAGES


MODEL_HELP = (
    "model file, runs:/<run id>, models:/<name>/<version> or models:/<name>@<alias>; several, "
    "comma-separated, or folds:<k|site>[/<run name>] (the folds of the newest cross-validation in "
    "the MLflow store) make an ensemble that averages their probabilities"
)
DEVICE_HELP = f"{', '.join(DEVICES[:-1])} or {DEVICES[-1]}"  # the torch devices glioseg.device selects from
DEFAULT_MODEL = MODEL.as_posix()  # the train stage's model file


def inference_help(setting: str) -> str:
    """The help of predict's option for an inference setting: the schema's description of the setting."""
    return f"{InferenceParams.model_fields[setting].description}; default: the model file's"


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
    """Validate params, run one pipeline stage (``run`` of ``glioseg.pipeline.stages.<stage>``), return its summary."""
    function = runner.stage_function(stage)
    if stage in runner.SWEEP_STAGES:
        if not sweep:
            raise GliosegError(f"the {stage} stage needs a sweep name: glioseg stage {stage} NAME")
        return runner.run(function, sweep, params_file=params_file)
    return runner.run(function, params_file=params_file)


@app.command()
@user_errors
def stage(
    name: Annotated[Stage, typer.Argument(help="the pipeline stage to run")],
    sweep: Annotated[
        str | None, typer.Argument(help="for sweep_train and sweep_evaluate: the name under `sweeps` in params.yaml")
    ] = None,
    params_file: Annotated[Path | None, typer.Option("--params", help="params file (default params.yaml)")] = None,
) -> None:
    """Run one pipeline stage (what `dvc repro` calls through stages/*.py)."""
    summary = run_stage(name.value, sweep, params_file)
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command("check-params")
@user_errors
def check_params(params_file: Annotated[Path, typer.Argument()] = Path("params.yaml")) -> None:
    """Validate a params file and print it with defaults filled in (`make repro` runs it before DVC)."""
    from glioseg.config.schema import load_params
    from glioseg.pipeline.outputs import check_source_outside_outputs

    params = load_params(params_file)
    check_source_outside_outputs(params.data.source)
    typer.echo(json.dumps(params.model_dump(), indent=2))


@app.command("params")
@user_errors
def params_command(
    profiles: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="PROFILE...", help="profiles (differences from the defaults), applied in order", show_default=False
        ),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="set one dotted key after the profiles; the value is YAML, as in dvc exp run -S (repeatable)",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="write the file here (atomically) instead of printing it", show_default=False)
    ] = None,
) -> None:
    """Compose a full params file: the defaults, then each profile, then the --set values.

    E.g. `glioseg params profiles/cpu-real.yaml --out params.yaml && dvc repro evaluate`.
    """
    from glioseg.config.compose import compose_params, params_command, params_yaml
    from glioseg.io import write_text

    tree = compose_params(*(profiles or []), overrides=overrides or [])
    text = params_yaml(tree, params_command(profiles or [], overrides or []))
    if out is None:
        typer.echo(text, nl=False)
    else:
        write_text(out, text)
        typer.echo(f"wrote {out}")


@app.command("check-metrics")
@user_errors
def check_metrics_command(
    metrics: Annotated[Path, typer.Argument(help="metrics JSON of the new run")],
    baseline: Annotated[Path, typer.Option(help="committed baseline metrics JSON")],
    rules: Annotated[Path, typer.Option(help="YAML of per-metric floors / tolerances")],
) -> None:
    """Compare metrics with a baseline; exit 1 when any metric falls below its floor."""
    from glioseg.evaluation.gate import check_metrics

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
    by: Annotated[
        str, typer.Option(help="patient (k folds), or site (leave one site out: one fold per site, --folds not needed)")
    ] = "patient",
    csv: Annotated[Path | None, typer.Option(help="also write the table to this CSV file")] = None,
) -> None:
    """Summarise a cross-validation (k folds by patient, or leave one site out): each fold's test
    metrics with their bootstrap intervals, their mean and sd, and all patients out of fold."""
    from glioseg.evaluation.crossval import cv_summary, to_markdown
    from glioseg.io import write_csv

    table = cv_summary(folds, run_name, by)
    typer.echo(to_markdown(table))
    if csv is not None:
        write_csv(csv, table)


@app.command("evaluate")
@user_errors
def evaluate_command(
    model: Annotated[list[str], typer.Option(help=MODEL_HELP + "; repeat the option for several")],
    subset: Annotated[str, typer.Option(help="the cached subset to score: test, val or train")] = "test",
    params_file: Annotated[Path, typer.Option("--params", help="params file (its inference and run settings)")] = Path(
        "params.yaml"
    ),
    out: Annotated[Path | None, typer.Option(help="also write every summary to this JSON file")] = None,
) -> None:
    """Score models on the pipeline's cached subset: each alone and, for several, their ensemble
    (probabilities averaged), with bootstrap intervals over patients."""
    from glioseg.config.schema import load_params
    from glioseg.evaluation.ensemble import compare_models
    from glioseg.io import write_json
    from glioseg.model.specs import model_specs

    table, summaries = compare_models(model_specs(model), subset, load_params(params_file))
    typer.echo(table.to_markdown(index=False, floatfmt=".4f"))
    if out is not None:
        write_json(out, summaries)


@app.command("predict")
@user_errors
def predict_command(
    source: Annotated[
        Path,
        typer.Argument(
            help="new scans in the model's data format, one case or a folder of "
            "cases: " + "; ".join(f"{f.title} {f.scans}" for f in FORMATS.values())
        ),
    ],
    out: Annotated[
        Path, typer.Option(help="output folder: predict adds its files and replaces only those it wrote there before")
    ],
    model: Annotated[list[str], typer.Option(help=MODEL_HELP + "; repeat the option for several")] = [  # noqa: B006
        DEFAULT_MODEL
    ],
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    overwrite: Annotated[
        bool, typer.Option(help="write into a folder that holds other files, replacing only files of the same names")
    ] = False,
    threshold: Annotated[float | None, typer.Option(help=inference_help("threshold"), show_default=False)] = None,
    tta: Annotated[bool | None, typer.Option("--tta/--no-tta", help=inference_help("tta"), show_default=False)] = None,
    postprocess: Annotated[
        str | None,
        typer.Option(
            metavar=f"[{'|'.join(get_args(Postprocess))}]", help=inference_help("postprocess"), show_default=False
        ),
    ] = None,
) -> None:
    """Segment new scans: masks in the scans' own format, overlays and tumour areas (areas.csv, cases.csv).

    Threshold, TTA and post-processing are the model file's (its training run's) unless given.
    """
    from glioseg.device import select_device
    from glioseg.inference.scans import DEVICE_OPTION, inference_options, predict

    overrides = inference_options(threshold=threshold, tta=tta, postprocess=postprocess)
    select_device(device, DEVICE_OPTION)  # a bad --device fails before any model is loaded
    table = predict(source, model, out, device, overrides, overwrite=overwrite)
    typer.echo(f"{len(table)} slices, {int((table['tumour_pixels'] > 0).sum())} with tumour -> {out}")


@app.command()
@user_errors
def serve(
    model: Annotated[str, typer.Option(help=MODEL_HELP)] = DEFAULT_MODEL,
    data: Annotated[
        Path | None,
        typer.Option(
            help="folder of cases to choose from [default: the model's dataset's, "
            + ", ".join(f"{raw_cases(f.raw_name).as_posix()} for {f.title}" for f in FORMATS.values())
            + "]",
            show_default=False,
        ),
    ] = None,
    port: Annotated[int, typer.Option(help="port on 127.0.0.1")] = 8501,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
) -> None:
    """The viewer: a web page on 127.0.0.1 to browse a case's slices with predicted and true tumour."""
    from glioseg.app import streamlit_command

    raise typer.Exit(subprocess.call(streamlit_command(model, data, port, device), env=os.environ.copy()))


server_app = typer.Typer(
    help="A team's MLflow tracking server on PostgreSQL (started and stopped by process id).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(server_app, name="server")


@server_app.command("start")
@user_errors
def server_start(
    port: Annotated[
        int | None, typer.Option(help="MLflow server port [default: a free one]", show_default=False)
    ] = None,
    postgres_port: Annotated[
        int | None, typer.Option(help="PostgreSQL port on 127.0.0.1 [default: a free one]", show_default=False)
    ] = None,
    host: Annotated[
        str, typer.Option(help="address to listen on; beyond loopback it needs --allowed-hosts")
    ] = "127.0.0.1",
    allowed_hosts: Annotated[
        str | None,
        typer.Option(help="Host headers the server answers (MLflow's --allowed-hosts), e.g. 'mlflow.lab.example:5000'"),
    ] = None,
    artifacts: Annotated[
        str | None,
        typer.Option(
            help="artifact store the server writes to: a folder URI or "
            "s3://bucket/prefix [default: .glioseg/server/artifacts]",
            show_default=False,
        ),
    ] = None,
    auth: Annotated[
        bool,
        typer.Option(
            "--auth",
            help="MLflow's basic authentication (users in the same "
            "PostgreSQL; the admin's credentials in .glioseg/server/admin.env)",
        ),
    ] = False,
) -> None:
    """Start PostgreSQL and the MLflow server for this repository; prints the MLFLOW_TRACKING_URI to use."""
    from glioseg.paths import repo_root
    from glioseg.tracking import server

    state = server.start(
        repo_root(),
        port=port,
        postgres_port=postgres_port,
        host=host,
        allowed_hosts=allowed_hosts,
        artifacts=artifacts,
        auth=auth,
    )
    typer.echo(
        f"export MLFLOW_TRACKING_URI={state.url}   # server pid {state.mlflow_pid}, "
        f"PostgreSQL on 127.0.0.1:{state.postgres_port}, artifacts {state.artifacts}"
    )
    if state.credentials:
        typer.echo(
            f"# clients set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD; the admin's: "
            f"set -a; . {state.credentials}; set +a"
        )


@server_app.command("stop")
@user_errors
def server_stop() -> None:
    """Stop the server and PostgreSQL this repository started (the database and artifacts stay)."""
    from glioseg.paths import repo_root
    from glioseg.tracking import server

    state = server.stop(repo_root())
    typer.echo(f"stopped {state.url} (pid {state.mlflow_pid}) and PostgreSQL on 127.0.0.1:{state.postgres_port}")


@server_app.command("remove")
@user_errors
def server_remove(
    yes: Annotated[bool, typer.Option("--yes", help="really delete the team database")] = False,
) -> None:
    """Delete the stopped server's PostgreSQL cluster (every run, model version, alias and user) and its
    password and state files, to start over; the artifacts stay."""
    from glioseg.paths import repo_root
    from glioseg.tracking import server

    removed = server.remove(repo_root(), yes=yes)
    typer.echo(f"removed {', '.join(map(str, removed))}" if removed else "nothing to remove")


@server_app.command("status")
@user_errors
def server_status() -> None:
    """The running server's address and process ids."""
    from dataclasses import asdict

    from glioseg.paths import repo_root
    from glioseg.tracking import server

    typer.echo(json.dumps(asdict(server.read_state(repo_root())), indent=2))


tracking_app = typer.Typer(help="The MLflow store.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(tracking_app, name="tracking")


@tracking_app.command("migrate")
@user_errors
def tracking_migrate(
    to: Annotated[str, typer.Option("--to", help="the store to copy into, e.g. http://127.0.0.1:5000")],
    source: Annotated[
        str | None, typer.Option("--from", help="the store to copy [default: this repository's]", show_default=False)
    ] = None,
) -> None:
    """Copy experiments, runs (params, metric histories, tags, artifacts) and registered models into
    another store; running it again copies only what is new."""
    from glioseg.tracking.migrate import migrate
    from glioseg.tracking.store import tracking_uri

    typer.echo(json.dumps(migrate(source or tracking_uri(), to).summary(), indent=2))


@app.command()
@user_errors
def promote(
    name: Annotated[str, typer.Option(help="registered model")] = "glioseg-lgg",
    version: Annotated[
        str | None, typer.Option(help="the candidate [default: the newest version]", show_default=False)
    ] = None,
    rules: Annotated[Path, typer.Option(help="the gate's rules (tolerances against the champion, floors)")] = Path(
        "ci/floors.yaml"
    ),
    alias: Annotated[str, typer.Option(help="the alias to move")] = "champion",
) -> None:
    """Point NAME@champion at the candidate only if its test metrics pass the gate against the champion's."""
    from glioseg.evaluation.promote import promote as promote_version
    from glioseg.tracking.store import client

    outcome = promote_version(client(), name, str(rules), version, alias)
    if outcome.table:
        typer.echo(outcome.table)
    typer.echo(outcome.message(name, alias))
    if not outcome.promoted:
        raise typer.Exit(1)


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="port on 127.0.0.1")] = 5000,
) -> None:
    """Browse the runs: `mlflow ui` on 127.0.0.1 over the project's store."""
    from glioseg.tracking.store import artifact_location, tracking_uri

    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        tracking_uri(),
        "--default-artifact-root",
        artifact_location(),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    raise typer.Exit(subprocess.call(command, env=os.environ.copy()))


if __name__ == "__main__":
    app()
