"""``glioseg tracking migrate``: copy a tracking store into another (a local SQLite store into a team server).

MLflow has no tool for this. Every experiment is matched by name; every run is copied with its
name, start and end times, status, tags, params, full metric histories (every step and
timestamp) and run artifacts (overlays, curves, the glioseg checkpoint), and tagged
``glioseg.migrated_from`` with the id of the run it copies (the first one's, for a copy of a
copy). Run ids are unique across stores, so however a store is named, migrating again, or back,
copies only what is new; a nested run (an evaluation with other inference settings) stays under
its copied parent. Each registered model version is re-created on its copied run (its source:
the run's glioseg checkpoint, which predict loads), with its tags, and the model's aliases follow
their versions. A store is refused as its own target however it is named (:func:`store_identity`).

Not copied: MLflow 3's logged-model entities (``mlflow.pytorch.log_model``'s pickled model, which
glioseg never loads), and deleted experiments or runs.
"""

from __future__ import annotations

import os
import tempfile
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from glioseg.errors import DataError
from glioseg.tracking import store as tracking

MIGRATED_FROM = "glioseg.migrated_from"
BATCH = 1000  # MLflow's log_batch limit for metrics


@dataclass
class Migration:
    """What one migration did: counts, and the source -> target run ids it knows of."""

    runs_copied: int = 0
    runs_already_there: int = 0
    versions_copied: int = 0
    versions_already_there: int = 0
    run_ids: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, int]:
        return {
            "runs_copied": self.runs_copied,
            "runs_already_there": self.runs_already_there,
            "model_versions_copied": self.versions_copied,
            "model_versions_already_there": self.versions_already_there,
        }


def _pages(search, *args, **kwargs) -> Iterator[Any]:
    """Every item of a paged MLflow search."""
    token = None
    while True:
        page = search(*args, **kwargs, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def origin(run: Any) -> str:
    """The id of the run that ``run`` is, or copies: where it was first logged."""
    return run.data.tags.get(MIGRATED_FROM, run.info.run_id)


def _copy_run(source: Any, target: Any, run: Any, experiment_id: str, done: Migration) -> str:
    from mlflow.entities import Param

    tags = {key: value for key, value in run.data.tags.items() if not key.startswith("mlflow.runName")}
    tags[MIGRATED_FROM] = origin(run)
    if tags.get(tracking.PARENT_RUN) in done.run_ids:
        tags[tracking.PARENT_RUN] = done.run_ids[tags[tracking.PARENT_RUN]]
    copied = target.create_run(experiment_id, start_time=run.info.start_time, run_name=run.info.run_name, tags=tags)
    run_id = copied.info.run_id
    params = [Param(key, value) for key, value in run.data.params.items()]
    for start in range(0, len(params), 100):
        target.log_batch(run_id, params=params[start : start + 100])
    for key in run.data.metrics:
        history = source.get_metric_history(run.info.run_id, key)
        for start in range(0, len(history), BATCH):
            target.log_batch(run_id, metrics=history[start : start + BATCH])
    with tempfile.TemporaryDirectory(prefix="glioseg-migrate-") as tmp:
        if source.list_artifacts(run.info.run_id):
            local = source.download_artifacts(run.info.run_id, "", tmp)
            target.log_artifacts(run_id, local)
    target.set_terminated(run_id, status=run.info.status, end_time=run.info.end_time)
    return run_id


def _migrate_runs(source: Any, target: Any, done: Migration) -> None:
    for experiment in _pages(source.search_experiments):
        found = target.get_experiment_by_name(experiment.name)
        experiment_id = (
            found.experiment_id if found else target.create_experiment(experiment.name, tags=experiment.tags)
        )
        # The target's runs by the ids they are known by in any store: their own, and the run each copies.
        already = {}
        for run in _pages(target.search_runs, [experiment_id]):
            already[run.info.run_id] = already[origin(run)] = run.info.run_id
        # Top-level runs first, so that a nested run's parent has its id in the target.
        runs = sorted(
            _pages(source.search_runs, [experiment.experiment_id]), key=lambda run: tracking.PARENT_RUN in run.data.tags
        )
        for run in runs:
            known = already.get(origin(run))
            if known:
                done.run_ids[run.info.run_id] = known
                done.runs_already_there += 1
            else:
                done.run_ids[run.info.run_id] = _copy_run(source, target, run, experiment_id, done)
                done.runs_copied += 1


def _migrate_models(source: Any, target: Any, done: Migration) -> None:
    from mlflow.exceptions import MlflowException

    for model in _pages(source.search_registered_models):
        try:
            target.get_registered_model(model.name)
        except MlflowException:
            target.create_registered_model(model.name, tags=model.tags, description=model.description)
        # A version is known by its run: glioseg registers a run's checkpoint once per model, and
        # version numbers are per store (two stores both have a version 1).
        already = {
            version.run_id: version.version for version in _pages(target.search_model_versions, f"name='{model.name}'")
        }
        versions = {}
        for version in sorted(
            _pages(source.search_model_versions, f"name='{model.name}'"), key=lambda v: int(v.version)
        ):
            key = f"{model.name}/{version.version}"
            run_id = done.run_ids.get(version.run_id)
            if run_id is None:
                raise DataError(f"registered model {key}: its run {version.run_id} is not in the source store")
            if run_id in already:
                versions[version.version] = already[run_id]
                done.versions_already_there += 1
                continue
            created = target.create_model_version(
                model.name,
                f"runs:/{run_id}/checkpoint",
                run_id=run_id,
                tags={**version.tags, MIGRATED_FROM: key},
                description=version.description,
            )
            versions[version.version] = already[run_id] = created.version
            done.versions_copied += 1
        for alias, version in (model.aliases or {}).items():
            target.set_registered_model_alias(model.name, alias, versions[str(version)])


DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306}


def store_identity(uri: str) -> str:
    """One name for a tracking store however ``uri`` writes it: a SQLite file or a file store by its
    real path (relative to the working directory, as MLflow reads it; through symlinks), a server or
    database by its URL without credentials, driver, query, default port or trailing slash."""
    if uri.startswith("sqlite:///"):  # SQLAlchemy's form: sqlite:///relative.db, sqlite:////absolute.db
        return f"sqlite:///{os.path.realpath(uri[len('sqlite:///') :].split('?', 1)[0])}"
    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme.lower().split("+", 1)[0]  # postgresql+psycopg2 -> postgresql
    if scheme in ("", "file"):
        path = urllib.parse.unquote(parts.path) if scheme else uri
        return f"file://{os.path.realpath(path)}"
    host = (parts.hostname or "").lower()
    port = parts.port if parts.port not in (None, DEFAULT_PORTS.get(scheme)) else None
    netloc = f"{host}:{port}" if port else host
    return urllib.parse.urlunsplit((scheme, netloc, parts.path.rstrip("/"), "", ""))


def migrate(source_uri: str, target_uri: str) -> Migration:
    """Copy everything of ``source_uri``'s store that ``target_uri``'s does not hold yet."""
    identity = store_identity(source_uri)
    if identity == store_identity(target_uri):
        raise DataError(f"{source_uri} and {target_uri} are the same store ({identity}); migrate it into another")
    source, target = tracking.client(source_uri), tracking.client(target_uri)
    done = Migration()
    _migrate_runs(source, target, done)
    _migrate_models(source, target, done)
    return done
