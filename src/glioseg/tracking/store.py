"""MLflow: where the store lives, what a run is tagged with, and small logging helpers.

The default store is ``sqlite:///<repo>/mlflow.db`` with artifacts in ``<repo>/mlartifacts``.
``<repo>`` is DVC's ``DVC_ROOT`` when a stage runs, which names the original repository even
under ``dvc exp run --queue``/``--temp`` (those run in a temporary copy: a path relative to the
working directory would be lost with it). Experiments are created with an explicit artifact
location for the same reason. ``MLFLOW_TRACKING_URI`` overrides the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from glioseg.errors import DataError
from glioseg.io import write_fault
from glioseg.paths import MANIFEST, repo_root

EXPERIMENT = "glioseg"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def is_server(uri: str) -> bool:
    """A tracking server (``http(s)://``): it stores and serves the artifacts itself."""
    return uri.startswith(("http://", "https://"))


def artifact_location() -> str:
    return (repo_root() / "mlartifacts").as_uri()


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def file_sha256(path: Path) -> str:
    if not path.is_file():
        return "missing"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_tags(extra: dict[str, str] | None = None) -> dict[str, str]:
    tags = {
        "git_commit": git_commit(repo_root()),
        "data_manifest_sha256": file_sha256(Path(MANIFEST)),
        "dvc_stage": os.environ.get("DVC_STAGE", ""),
    }
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_experiment"] = os.environ["DVC_EXP_NAME"]
        tags["dvc_baseline_rev"] = os.environ.get("DVC_EXP_BASELINE_REV", "")
    return {**tags, **(extra or {})}


def _mlflow():
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # this machine has no network to send it to
    # MLflow writes "View run ... at: URL" lines to stdout against a server; commands print JSON there.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    import mlflow  # imported lazily: it takes seconds and most commands do not need it

    return mlflow


def client(uri: str | None = None):
    """An MLflow client of ``uri`` (default: this repository's store), its model registry included."""
    mlflow = _mlflow()
    uri = uri or tracking_uri()
    return mlflow.tracking.MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """Faults of the MLflow store as one line naming it: a damaged database, a full or read-only disk."""
    from sqlalchemy.exc import DatabaseError

    try:
        yield
    except DatabaseError as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise DataError(
            f"{tracking_uri()}: the MLflow store cannot be read ({reason}); move the file aside to "
            "start a new store, or set MLFLOW_TRACKING_URI to another"
        ) from None
    except OSError as exc:
        fault = write_fault(exc, artifact_location())
        if fault is None:
            raise
        raise fault from None


def ensure_experiment(name: str = EXPERIMENT) -> str:
    """The experiment's id, created with its artifacts under this repository when it is new.

    MLflow keeps an experiment's artifact folder for good; a store copied or moved with its
    repository still names the old folder, so that is said once per run, with where artifacts go.
    """
    mlflow = _mlflow()
    mlflow.set_tracking_uri(tracking_uri())
    if is_server(tracking_uri()):  # the server's artifact store (mlflow-artifacts:/), reachable by every client
        with store_errors():
            experiment = mlflow.get_experiment_by_name(name)
            return experiment.experiment_id if experiment else mlflow.create_experiment(name)
    wanted = f"{artifact_location()}/{name}"
    with store_errors():
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            return mlflow.create_experiment(name, artifact_location=wanted)
    if experiment.artifact_location != wanted:
        print(
            f"warning: {tracking_uri()}: experiment '{name}' keeps its artifacts in {experiment.artifact_location} "
            f"(fixed when it was created, not under this repository's {artifact_location()}); new runs' "
            "artifacts go there too",
            file=sys.stderr,
        )
    return experiment.experiment_id


OWNER_PID, OWNER_HOST = "glioseg.pid", "glioseg.host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def end_abandoned_runs(experiment_id: str) -> list[str]:
    """Mark KILLED the RUNNING runs whose training process on this host is gone (killed, crashed).

    A process killed outright cannot end its own run; the next training does, so no run stays
    RUNNING for ever. Runs of other hosts, and runs of processes still alive, are left alone.
    """
    tracker = client()
    running = tracker.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
    ended = []
    for run in running:
        pid, host = run.data.tags.get(OWNER_PID), run.data.tags.get(OWNER_HOST)
        if host == socket.gethostname() and pid and pid.isdigit() and not _alive(int(pid)):
            tracker.set_terminated(run.info.run_id, status="KILLED")
            ended.append(run.info.run_id)
    return ended


def run_exists(run_id: str) -> bool:
    """Whether this store holds run ``run_id`` (a checkpoint may name a run of another store)."""
    try:
        client().get_run(run_id)
    except Exception:  # MLflow raises MlflowException, or a store error, for an unknown id
        return False
    return True


def require_run(run_id: str, owner: str) -> None:
    """Refuse, in one line, a model file (``owner``) whose training run is not in this store."""
    from mlflow.exceptions import MlflowException

    with store_errors():
        try:
            client().get_run(run_id)
            return
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
    raise DataError(
        f"{owner}: its MLflow run {run_id} is not in the tracking store {tracking_uri()}; set "
        "MLFLOW_TRACKING_URI to the store that trained it, or train it again to log it here"
    )


@contextlib.contextmanager
def start_run(run_name: str, params: dict[str, Any], tags: dict[str, str], resume: str | None = None) -> Iterator[Any]:
    """A run for one training: ``resume`` (the run a checkpoint was logged to, which must exist), else a new one.

    A resumed run keeps its params (MLflow params cannot change) and gains the remaining epochs.
    """
    mlflow = _mlflow()
    experiment_id = ensure_experiment()
    with store_errors():
        end_abandoned_runs(experiment_id)
        owner = {OWNER_PID: str(os.getpid()), OWNER_HOST: socket.gethostname()}
        if resume is not None:
            with mlflow.start_run(run_id=resume) as run:
                mlflow.set_tags(owner)
                yield run
            return
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=run_tags(tags) | owner) as run:
            mlflow.log_params({key: str(value) for key, value in params.items()})
            yield run


def registered_name(dataset: str) -> str:
    """The registered model of a dataset's main training runs: ``glioseg-lgg``, ``glioseg-brats``."""
    return f"glioseg-{dataset}"


def register_checkpoint(run_id: str, dataset: str, tags: dict[str, str]) -> str:
    """A version of ``glioseg-<dataset>`` for the run's glioseg checkpoint (once per run); returns its number."""
    from mlflow.exceptions import MlflowException

    tracker, name = client(), registered_name(dataset)
    with store_errors():
        try:
            tracker.get_registered_model(name)
        except MlflowException:
            tracker.create_registered_model(
                name, description=f"glioseg U-Nets trained on {dataset} (`glioseg promote` moves the champion alias)"
            )
        existing = tracker.search_model_versions(f"name='{name}' and run_id='{run_id}'")
        if existing:
            return existing[0].version
        return tracker.create_model_version(name, f"runs:/{run_id}/checkpoint", run_id=run_id, tags=tags).version


def log_training_data(frame: Any, name: str, source: str, tags: dict[str, str]) -> None:
    """The slices a run trained and validated on, as the run's MLflow dataset input (lineage in the UI)."""
    mlflow = _mlflow()
    dataset = mlflow.data.from_pandas(frame, source=source, name=name)
    mlflow.log_input(dataset, context="training", tags=tags)


def log_metrics(metrics: dict[str, float], step: int | None = None, prefix: str = "") -> None:
    _mlflow().log_metrics({f"{prefix}{k}": float(v) for k, v in metrics.items()}, step=step)


def log_image(image: np.ndarray, artifact_file: str) -> None:
    _mlflow().log_image(image, artifact_file=artifact_file)


def log_artifact(path: str | os.PathLike, artifact_path: str | None = None) -> None:
    _mlflow().log_artifact(str(path), artifact_path=artifact_path)


def log_model(model: Any, name: str = "model") -> None:
    import torch

    _mlflow().pytorch.log_model(
        model,
        name=name,
        serialization_format="pickle",
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "segmentation-models-pytorch==0.6.0"],
    )


def search_runs(filter_string: str = "") -> Any:
    """The project experiment's runs as ``mlflow.search_runs`` gives them (empty without the experiment)."""
    mlflow = _mlflow()
    mlflow.set_tracking_uri(tracking_uri())
    with store_errors():
        if mlflow.get_experiment_by_name(EXPERIMENT) is None:
            import pandas as pd

            return pd.DataFrame()
        return mlflow.search_runs(experiment_names=[EXPERIMENT], filter_string=filter_string)


PER_PATIENT_ARTIFACT = "evaluation/{subset}_per_patient.csv"  # evaluate's per-patient table of a subset
PARENT_RUN = "mlflow.parentRunId"  # MLflow's tag of a nested run
# The key of the inference settings a run's evaluation metrics come from, and (on a training run)
# of those its model file carries, with which predict and the registered model serve it.
INFERENCE_KEY, MODEL_INFERENCE_KEY = "glioseg.inference_key", "glioseg.model_inference_key"


def inference_key(settings: Mapping[str, Any]) -> str:
    """A short stable name for inference settings (``InferenceParams.model_dump(mode="json")``)."""
    canonical = json.dumps(dict(settings), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def evaluated_as_served(tags: Mapping[str, Any]) -> bool:
    """Whether a training run's metrics are an evaluation with the inference settings its model carries.

    A run without both keys was not evaluated, or was evaluated by a glioseg that logged every
    evaluation to it, whatever its settings: its metrics are then the last one's.
    """
    key = tags.get(INFERENCE_KEY)
    return isinstance(key, str) and key == tags.get(MODEL_INFERENCE_KEY)


def log_to_run(
    run_id: str,
    metrics: dict[str, float],
    images: dict[str, np.ndarray],
    tags: dict[str, str] | None = None,
    texts: dict[str, str] | None = None,
) -> None:
    """Add metrics, images, tags and text files to an existing run (a finished training run, say)."""
    mlflow = _mlflow()
    mlflow.set_tracking_uri(tracking_uri())
    with store_errors(), mlflow.start_run(run_id=run_id):
        _log_outputs(metrics, images, tags or {}, texts or {})


def _log_outputs(
    metrics: dict[str, float], images: dict[str, np.ndarray], tags: dict[str, str], texts: dict[str, str]
) -> None:
    """Into the active run; the metrics before the tags, which (:data:`INFERENCE_KEY`) say what they are."""
    mlflow = _mlflow()
    log_metrics(metrics)
    mlflow.set_tags(tags)
    for artifact_file, image in images.items():
        log_image(image, artifact_file)
    for artifact_file, text in texts.items():
        mlflow.log_text(text, artifact_file)


def log_evaluation(
    run_id: str,
    settings: Mapping[str, Any],
    model_settings: Mapping[str, Any],
    metrics: dict[str, float],
    images: dict[str, np.ndarray],
    tags: dict[str, str],
    texts: dict[str, str],
) -> str:
    """Log an evaluation made with inference ``settings`` of the model of training run ``run_id``, whose
    file carries ``model_settings``; returns the id of the run it went to.

    The training run's metrics stay those of its model as served (what ``promote`` and
    ``cv-summary`` judge): an evaluation with the model's own settings goes to that run, any other
    to a new run nested under it, with the settings as its params.
    """
    key, own = inference_key(settings), inference_key(model_settings)
    described = {f"inference.{name}": str(value) for name, value in settings.items()}
    tracker = client()
    with store_errors():
        tracker.set_tag(run_id, MODEL_INFERENCE_KEY, own)
    if key == own:
        log_to_run(run_id, metrics, images, {**tags, **described, INFERENCE_KEY: key}, texts)
        return run_id
    mlflow = _mlflow()
    mlflow.set_tracking_uri(tracking_uri())
    with store_errors():
        experiment_id = tracker.get_run(run_id).info.experiment_id
        with mlflow.start_run(
            experiment_id=experiment_id,
            run_name=f"evaluate-{key}",
            tags=run_tags({**tags, PARENT_RUN: run_id, INFERENCE_KEY: key}),
        ) as nested:
            mlflow.log_params(described)
            _log_outputs(metrics, images, {}, texts)
    return nested.info.run_id


def load_run_text(run_id: str, artifact_file: str) -> str | None:
    """A text artifact of a run (as :func:`log_to_run` logged it), None when the run has none by that name."""
    mlflow = _mlflow()
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(tracking_uri())
    with store_errors():
        try:
            return mlflow.artifacts.load_text(f"runs:/{run_id}/{artifact_file}")
        except (MlflowException, FileNotFoundError):
            return None
