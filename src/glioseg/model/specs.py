"""Model specs: how predict, the viewer and ``glioseg evaluate`` name the model(s) they use.

A spec is a checkpoint file, ``runs:/<run id>``, ``models:/<name>/<version>``,
``models:/<name>@<alias>``, or ``folds:<k|site>[/<run name>]``: the fold models of the newest
complete cross-validation in the MLflow store (k folds by patient, or leave one site out).
Several specs, comma-separated or given one by one, load as a :class:`ModelSet` whose
probabilities are averaged (a fold ensemble). A spec read from the MLflow store needs the store
to exist: opening a missing local one would create an empty store (:func:`check_store`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from glioseg.errors import ConfigError, DataError
from glioseg.model.checkpoint import LoadedModel, ModelSet, load_model

CHECKPOINT_ARTIFACT = "checkpoint/model.pt"
FOLDS_SPEC = "folds:"


def local_store(uri: str) -> Path | None:
    """The file or folder of a local MLflow store (``sqlite:///``, ``file:``, a bare path); None for a server."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///").partition("?")[0])
    if uri.startswith("file:"):
        return Path(urlparse(uri).path)
    return None if "://" in uri else Path(uri)


def check_store(spec: str) -> None:
    """Refuse ``spec`` when the MLflow store it reads from is a local one that does not exist."""
    from glioseg.tracking import store as tracking

    uri = tracking.tracking_uri()
    store = local_store(uri)
    if store is not None and not store.exists():
        raise DataError(
            f"{spec}: no MLflow store at {store} (tracking URI {uri}); train a model first, set "
            "MLFLOW_TRACKING_URI, or give a model file"
        )


def load_model_spec(spec: str | os.PathLike) -> LoadedModel:
    """The model of a checkpoint file, ``runs:/<run id>[/...]``, ``models:/<name>/<version>`` or
    ``models:/<name>@<alias>`` (``models:/glioseg-lgg@champion``).

    For MLflow URIs the run's glioseg checkpoint artifact is downloaded (it loads with
    ``weights_only=True``; the pickled MLflow model is never unpickled) into a temporary folder
    that is removed as soon as the model is in memory.
    """
    spec = str(spec)
    if not spec.startswith(("runs:/", "models:/")):
        return load_model(spec)
    from glioseg.tracking import store as tracking

    check_store(spec)
    client = tracking.client()
    if spec.startswith("models:/"):
        reference = spec.removeprefix("models:/")
        name, alias = reference.split("@", 1) if "@" in reference else (reference, None)
        name, _, version = name.partition("/")
        try:
            found = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
        except Exception as exc:  # MLflow raises its own exception types for unknown models
            raise DataError(f"{spec}: no such registered model version ({type(exc).__name__})") from None
        run_id = found.run_id
    else:
        run_id = spec.removeprefix("runs:/").split("/")[0]
    with tempfile.TemporaryDirectory(prefix="glioseg-model-") as target:
        try:
            path = client.download_artifacts(run_id, CHECKPOINT_ARTIFACT, target)
        except Exception as exc:
            raise DataError(f"{spec}: run has no glioseg checkpoint artifact ({type(exc).__name__})") from None
        return load_model(path)


def model_specs(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """The specs of one model or a set: a comma-separated string, or a list of them; ``folds:``
    specs become the ``runs:/`` of their folds."""
    given = [spec] if isinstance(spec, str | os.PathLike) else list(spec)
    names = [part.strip() for item in given for part in str(item).split(",") if part.strip()]
    if not names:
        raise ConfigError("--model: no model given")
    return [expanded for name in names for expanded in fold_specs(name)]


def fold_specs(spec: str) -> list[str]:
    """``folds:5[/train]`` or ``folds:site[/train]`` -> the ``runs:/<id>`` of that cross-validation's folds."""
    if not spec.startswith(FOLDS_SPEC):
        return [spec]
    from glioseg.tracking.folds import newest_cross_validation

    kind, _, run_name = spec.removeprefix(FOLDS_SPEC).partition("/")
    if kind != "site" and not kind.isdigit():
        raise ConfigError(f"{spec}: expected folds:<k>[/<run name>] or folds:site[/<run name>]")
    check_store(spec)
    by = "site" if kind == "site" else "patient"
    folds = newest_cross_validation(0 if by == "site" else int(kind), run_name or "train", by)
    return [f"runs:/{run_id}" for run_id in folds["run_id"]]


def load_models(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> LoadedModel | ModelSet:
    """One model, or a :class:`ModelSet` when the spec names several (:func:`model_specs`)."""
    names = model_specs(spec)
    loaded = [load_model_spec(name) for name in names]
    return loaded[0] if len(loaded) == 1 else ModelSet(tuple(loaded), tuple(names))
