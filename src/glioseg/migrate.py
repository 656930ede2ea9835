"""``glioseg tracking migrate``: copy a tracking store into another (a local SQLite store into a team server).

MLflow has no tool for this. Every experiment is matched by name; every run is copied with its
name, start and end times, status, tags, params, full metric histories (every step and
timestamp) and run artifacts (overlays, curves, the glioseg checkpoint), and tagged
``glioseg.migrated_from`` with its source id, so migrating again copies only what is new. Each
registered model version is re-created on its copied run (its source: the run's glioseg
checkpoint, which predict loads), with its tags, and the model's aliases follow their versions.

Not copied: MLflow 3's logged-model entities (``mlflow.pytorch.log_model``'s pickled model, which
glioseg never loads), and deleted experiments or runs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from glioseg import tracking
from glioseg.errors import DataError

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
        return {"runs_copied": self.runs_copied, "runs_already_there": self.runs_already_there,
                "model_versions_copied": self.versions_copied,
                "model_versions_already_there": self.versions_already_there}


def _pages(search, *args, **kwargs) -> Iterator[Any]:
    """Every item of a paged MLflow search."""
    token = None
    while True:
        page = search(*args, **kwargs, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _copy_run(source: Any, target: Any, run: Any, experiment_id: str) -> str:
    from mlflow.entities import Param

    tags = {key: value for key, value in run.data.tags.items() if not key.startswith("mlflow.runName")}
    copied = target.create_run(experiment_id, start_time=run.info.start_time, run_name=run.info.run_name,
                               tags={**tags, MIGRATED_FROM: run.info.run_id})
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
        experiment_id = found.experiment_id if found else target.create_experiment(experiment.name,
                                                                                    tags=experiment.tags)
        already = {run.data.tags[MIGRATED_FROM]: run.info.run_id
                   for run in _pages(target.search_runs, [experiment_id]) if MIGRATED_FROM in run.data.tags}
        for run in _pages(source.search_runs, [experiment.experiment_id]):
            if run.info.run_id in already:
                done.run_ids[run.info.run_id] = already[run.info.run_id]
                done.runs_already_there += 1
            else:
                done.run_ids[run.info.run_id] = _copy_run(source, target, run, experiment_id)
                done.runs_copied += 1


def _migrate_models(source: Any, target: Any, done: Migration) -> None:
    from mlflow.exceptions import MlflowException

    for model in _pages(source.search_registered_models):
        try:
            target.get_registered_model(model.name)
        except MlflowException:
            target.create_registered_model(model.name, tags=model.tags, description=model.description)
        already = {version.tags.get(MIGRATED_FROM): version.version
                   for version in _pages(target.search_model_versions, f"name='{model.name}'")}
        versions = {}
        for version in sorted(_pages(source.search_model_versions, f"name='{model.name}'"),
                              key=lambda v: int(v.version)):
            key = f"{model.name}/{version.version}"
            if key in already:
                versions[version.version] = already[key]
                done.versions_already_there += 1
                continue
            run_id = done.run_ids.get(version.run_id)
            if run_id is None:
                raise DataError(f"registered model {key}: its run {version.run_id} is not in the source store")
            created = target.create_model_version(model.name, f"runs:/{run_id}/checkpoint", run_id=run_id,
                                                  tags={**version.tags, MIGRATED_FROM: key},
                                                  description=version.description)
            versions[version.version] = created.version
            done.versions_copied += 1
        for alias, version in (model.aliases or {}).items():
            target.set_registered_model_alias(model.name, alias, versions[str(version)])


def migrate(source_uri: str, target_uri: str) -> Migration:
    """Copy everything of ``source_uri``'s store that ``target_uri``'s does not hold yet."""
    if source_uri == target_uri:
        raise DataError(f"{source_uri}: source and target are the same store")
    source, target = tracking.client(source_uri), tracking.client(target_uri)
    done = Migration()
    _migrate_runs(source, target, done)
    _migrate_models(source, target, done)
    return done
