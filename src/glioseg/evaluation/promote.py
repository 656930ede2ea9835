"""``glioseg promote``: move a registered model's ``champion`` alias, only when the metrics gate passes.

The candidate (a version of ``glioseg-<dataset>``, the newest by default) is compared with the
current champion by :func:`glioseg.evaluation.gate.compare` under the same rules files as CI
(``ci/floors.yaml``): its test metrics, logged to its run by the evaluate stage with the inference
settings the model carries (:func:`glioseg.tracking.store.log_evaluation`), must stay within
each rule's tolerance of the champion's and above each floor. Then the alias moves; otherwise it
stays where it was and the comparison says which metric fell. The first evaluated version of a
model becomes its champion. Aliases, not MLflow's deprecated stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from glioseg.config.numerics import TRAINING_NUMERICS
from glioseg.config.schema import flatten
from glioseg.errors import DataError
from glioseg.evaluation.gate import check_same_numerics, compare, load_floors, to_markdown
from glioseg.tracking import store as tracking

ALIAS = "champion"


@dataclass(frozen=True)
class Promotion:
    promoted: bool
    candidate: str
    champion_before: str | None
    table: str

    def message(self, name: str, alias: str) -> str:
        if self.promoted:
            before = f" (was version {self.champion_before})" if self.champion_before else " (the first)"
            return f"{name}@{alias} -> version {self.candidate}{before}"
        return f"{name} version {self.candidate} not promoted: {alias} stays at version {self.champion_before}"


def run_metrics(client: Any, run_id: str, what: str) -> dict[str, Any]:
    """A run's evaluation metrics in the shape of metrics/test.json (``test_x`` logged -> ``test.x``),
    with the training precision the evaluate stage tagged.

    Only an evaluation with the inference settings the run's model carries, as it is served, is
    judged; ``what`` (the model version) names the run when it has none.
    """
    run = client.get_run(run_id)
    if not tracking.evaluated_as_served(run.data.tags):
        raise DataError(
            f"{what}: its run {run_id} has no evaluation with the inference settings its model "
            "carries (any with other settings are runs nested under it); run the evaluate stage "
            "for it with the inference params it was trained with"
        )
    nested: dict[str, Any] = {}
    for key, value in run.data.metrics.items():
        subset, _, name = key.partition("_")
        if subset in ("test", "train") and name:
            nested.setdefault(subset, {})[name] = value
    numerics = {key: run.data.tags[key] for key in TRAINING_NUMERICS if key in run.data.tags}
    if numerics and "test" in nested:
        nested["test"]["protocol"] = numerics
    return nested


def candidate_version(client: Any, name: str, version: str | None) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        if version is not None:
            return client.get_model_version(name, version)
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException as exc:
        raise DataError(f"{name}: no such registered model or version ({exc.error_code})") from None
    if not versions:
        raise DataError(f"{name}: the registered model has no versions")
    return max(versions, key=lambda v: int(v.version))


def current_champion(client: Any, name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def promote(client: Any, name: str, rules_path: str, version: str | None = None, alias: str = ALIAS) -> Promotion:
    """Set ``alias`` on the candidate version when it passes the rules against the current holder."""
    rules = load_floors(rules_path)
    candidate = candidate_version(client, name, version)
    current = run_metrics(client, candidate.run_id, f"{name} version {candidate.version}")
    logged = flatten(current)
    missing = [metric for metric in rules if metric not in logged]
    if missing:
        raise DataError(
            f"{name} version {candidate.version}: its run {candidate.run_id} has no {missing[0]} "
            "(run the evaluate stage for it first)"
        )
    champion = current_champion(client, name, alias)
    if champion is None:
        client.set_registered_model_alias(name, alias, candidate.version)
        return Promotion(True, candidate.version, None, "")
    baseline = run_metrics(client, champion.run_id, f"{name}@{alias} (version {champion.version})")
    check_same_numerics(
        current, baseline, f"{name} version {candidate.version}", f"{name}@{alias} (version {champion.version})"
    )
    table = compare(current, baseline, rules)
    passed = bool(table["ok"].all())
    if passed:
        client.set_registered_model_alias(name, alias, candidate.version)
    return Promotion(passed, candidate.version, champion.version, to_markdown(table))
