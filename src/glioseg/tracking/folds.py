"""Which MLflow runs form a cross-validation: the newest complete set of fold runs of one configuration."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from glioseg.errors import DataError
from glioseg.tracking import store as tracking

RUN_SETTINGS = ("split.fold", "run.threads", "run.device", "run.overlay_every", "run.overlay_slices")


HEADLINE = "metrics.test_dice_patient_mean"


FOLD_COUNT = {"patient": "params.split.folds", "site": "tags.split_sites"}


def configuration(run: pd.Series) -> tuple:
    """What makes runs folds of one configuration: run name and params, run settings left out."""
    ignored = {f"params.{name}" for name in RUN_SETTINGS}
    params = sorted(
        (key, None if pd.isna(value) else str(value))
        for key, value in run.items()
        if key.startswith("params.") and key not in ignored
    )
    return (run.get("tags.mlflow.runName"), tuple(params))


def as_served(runs: pd.DataFrame) -> pd.Series:
    """Per run, whether its metrics are an evaluation with the inference settings its model carries."""
    keys = (tracking.INFERENCE_KEY, tracking.MODEL_INFERENCE_KEY)
    return pd.Series(
        [tracking.evaluated_as_served({key: run.get(f"tags.{key}") for key in keys}) for _, run in runs.iterrows()],
        index=runs.index,
        dtype=bool,
    )


def complete_folds(runs: pd.DataFrame, folds: int, run_name: str, by: str = "patient") -> pd.DataFrame:
    """The newest complete set of ``folds`` evaluated fold runs named ``run_name``, one row per fold.

    ``runs`` is what ``mlflow.search_runs`` returns; ``by: site`` takes leave-one-site-out runs,
    ``folds`` being the number of sites. Of several runs of one fold, the newest counts. A run counts
    only when its metrics come from an evaluation with the inference settings its model carries (see
    :func:`glioseg.tracking.store.log_evaluation`). Raises :class:`DataError` saying which folds are
    missing when no set is complete.
    """
    count = FOLD_COUNT[by]
    hint = f"split.folds={folds}" if by == "patient" else f"split.by=site over {folds} sites"
    nothing = DataError(f"the MLflow store has no evaluated run named '{run_name}' with {hint}")
    if HEADLINE not in runs or count not in runs:
        raise nothing
    named = runs[(runs["tags.mlflow.runName"] == run_name) & (runs[count] == str(folds))]
    # Evaluated: with metrics, or with its model's key only (every evaluation had other settings).
    model_key = named.get(f"tags.{tracking.MODEL_INFERENCE_KEY}", pd.Series(np.nan, index=named.index))
    evaluated = named[named[HEADLINE].notna() | model_key.notna()]
    if evaluated.empty:
        raise nothing
    evaluated = evaluated.assign(fold=evaluated["params.split.fold"].astype(int))
    served = as_served(evaluated) & evaluated[HEADLINE].notna()
    chosen = evaluated[served]
    if chosen.empty:
        raise DataError(
            f"the MLflow store has no run named '{run_name}' with {hint} evaluated with the inference "
            f"settings its model carries{other_settings(evaluated[~served], range(folds))}"
        )
    chosen = chosen.assign(config=[configuration(row) for _, row in chosen.iterrows()])
    newest_first = chosen.sort_values("start_time", ascending=False)
    partial: pd.DataFrame | None = None
    for _, group in newest_first.groupby("config", sort=False):
        latest = group.drop_duplicates("fold").sort_values("fold")
        if len(latest) == folds:
            return latest.reset_index(drop=True)
        partial = latest if partial is None else partial
    assert partial is not None  # chosen is not empty: at least one configuration
    found = ", ".join(str(f) for f in partial["fold"])
    absent = sorted(set(range(folds)) - set(partial["fold"]))
    missing = ", ".join(str(f) for f in absent)
    queue = f"-S split.folds={folds}" if by == "patient" else "-S split.by=site"
    raise DataError(
        f"no complete {folds}-fold cross-validation of run '{run_name}': the newest configuration "
        f"has folds {found}, missing {missing} (dvc exp run --queue {queue} "
        f"-S split.fold=...; dvc queue start){other_settings(evaluated[~served], absent)}"
    )


def other_settings(runs: pd.DataFrame, folds: Iterable[int]) -> str:
    """The clause naming the newest run of each of ``folds`` among ``runs`` (evaluated, but not with the
    inference settings its model carries); empty when there is none."""
    newest = runs[runs["fold"].isin(list(folds))].sort_values("start_time", ascending=False).drop_duplicates("fold")
    if newest.empty:
        return ""
    named = ", ".join(f"fold {run.fold} (run {run.run_id})" for run in newest.sort_values("fold").itertuples())
    return (
        f"; evaluated only with other inference settings than its model carries, or by an older glioseg: "
        f"{named} (run the evaluate stage again with the inference params each was trained with)"
    )


def newest_cross_validation(folds: int, run_name: str = "train", by: str = "patient") -> pd.DataFrame:
    """The fold runs of the newest complete cross-validation in the store (one row per fold):
    ``folds``-fold by patient, or (``by="site"``) leave one site out, as many folds as sites."""
    if by not in FOLD_COUNT:
        raise DataError(f"cross-validation by '{by}': expected one of {', '.join(FOLD_COUNT)}")
    if by == "site":
        runs = tracking.search_runs("params.`split.by` = 'site'")
        if runs.empty or "tags.split_sites" not in runs or runs["tags.split_sites"].isna().all():
            raise DataError("the MLflow store has no evaluated run with split.by=site")
        folds = int(runs.sort_values("start_time", ascending=False)["tags.split_sites"].dropna().iloc[0])
    elif folds < 2:
        raise DataError(f"--folds must be at least 2 (got {folds})")
    else:
        runs = tracking.search_runs(f"params.`split.folds` = '{folds}'")
    return complete_folds(runs, folds, run_name, by)
