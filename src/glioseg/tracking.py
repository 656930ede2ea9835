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
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from glioseg.paths import MANIFEST, repo_root

EXPERIMENT = "glioseg"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


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
    import mlflow  # imported lazily: it takes seconds and most commands do not need it

    return mlflow


def client():
    mlflow = _mlflow()
    return mlflow.tracking.MlflowClient(tracking_uri=tracking_uri())


def ensure_experiment(name: str = EXPERIMENT) -> str:
    mlflow = _mlflow()
    mlflow.set_tracking_uri(tracking_uri())
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return mlflow.create_experiment(name, artifact_location=f"{artifact_location()}/{name}")


@contextlib.contextmanager
def start_run(run_name: str, params: dict[str, Any], tags: dict[str, str]) -> Iterator[Any]:
    mlflow = _mlflow()
    experiment_id = ensure_experiment()
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=run_tags(tags)) as run:
        mlflow.log_params({key: str(value) for key, value in params.items()})
        yield run


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
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        import pandas as pd

        return pd.DataFrame()
    return mlflow.search_runs(experiment_names=[EXPERIMENT], filter_string=filter_string)


def log_to_run(run_id: str, metrics: dict[str, float], images: dict[str, np.ndarray],
               tags: dict[str, str] | None = None) -> None:
    """Add metrics, images and tags to a finished run (evaluate adds test results to the train run)."""
    mlflow = _mlflow()
    mlflow.set_tracking_uri(tracking_uri())
    with mlflow.start_run(run_id=run_id):
        log_metrics(metrics)
        mlflow.set_tags(tags or {})
        for artifact_file, image in images.items():
            log_image(image, artifact_file)
