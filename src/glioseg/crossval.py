"""Cross-validation by patient: one summary over the k fold runs of a configuration.

With ``split.folds: k`` every fold is its own experiment (``dvc exp run --queue -S
split.folds=5 -S split.fold=0,1,2,3,4``), trained and evaluated as one MLflow run. This module
finds those runs in the MLflow store and summarises them: each fold's test metrics, their mean
and standard deviation over the folds, and the per-patient metrics averaged over all patients.
Each patient is in exactly one test fold, so that last row is the out-of-fold mean over the
whole data set (the figure Buda et al. report for their 22 folds).

Runs are folds of one configuration when they have the same run name (``train`` or
``sweep-NAME``) and the same logged params, apart from ``split.fold`` and the settings in
:data:`RUN_SETTINGS`, which change where and how fast a run goes but not what it trains.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from glioseg import tracking
from glioseg.errors import DataError

RUN_SETTINGS = ("split.fold", "run.threads", "run.device", "run.overlay_every", "run.overlay_slices")
HEADLINE = "metrics.test_dice_patient_mean"
# Logged metric -> column; the per-patient ones also get the mean over all patients.
FOLD_METRICS = {
    "metrics.test_dice_patient_mean": "test Dice per patient",
    "metrics.test_iou_patient_mean": "test IoU per patient",
    "metrics.test_hd95_patient_mean": "test HD95 per patient",
    "metrics.test_dice_pooled": "test Dice pooled",
    "metrics.test_dice_positive_slice_mean": "test Dice (tumour slices)",
    "metrics.train_dice_patient_mean": "train Dice per patient",
}
PATIENT_COLUMNS = ("test Dice per patient", "test IoU per patient", "test HD95 per patient")
REGION_PREFIX, REGION_SUFFIX = "metrics.test_regions.", ".dice_patient_mean"


def configuration(run: pd.Series) -> tuple:
    """What makes runs folds of one configuration: run name and params, run settings left out."""
    ignored = {f"params.{name}" for name in RUN_SETTINGS}
    params = sorted((key, None if pd.isna(value) else str(value)) for key, value in run.items()
                    if key.startswith("params.") and key not in ignored)
    return (run.get("tags.mlflow.runName"), tuple(params))


def complete_folds(runs: pd.DataFrame, folds: int, run_name: str) -> pd.DataFrame:
    """The newest complete set of ``folds`` evaluated fold runs named ``run_name``, one row per fold.

    ``runs`` is what ``mlflow.search_runs`` returns. Of several runs of one fold, the newest
    counts. Raises :class:`DataError` saying which folds are missing when no set is complete.
    """
    nothing = DataError(f"the MLflow store has no evaluated run named '{run_name}' with split.folds={folds}")
    if HEADLINE not in runs or "params.split.folds" not in runs:
        raise nothing
    chosen = runs[(runs["tags.mlflow.runName"] == run_name) & (runs["params.split.folds"] == str(folds))
                  & runs[HEADLINE].notna()]
    if chosen.empty:
        raise nothing
    chosen = chosen.assign(fold=chosen["params.split.fold"].astype(int),
                           config=[configuration(row) for _, row in chosen.iterrows()])
    newest_first = chosen.sort_values("start_time", ascending=False)
    partial = None
    for _, group in newest_first.groupby("config", sort=False):
        latest = group.drop_duplicates("fold").sort_values("fold")
        if len(latest) == folds:
            return latest.reset_index(drop=True)
        partial = latest if partial is None else partial
    found = ", ".join(str(f) for f in partial["fold"])
    missing = ", ".join(str(f) for f in sorted(set(range(folds)) - set(partial["fold"])))
    raise DataError(f"no complete {folds}-fold cross-validation of run '{run_name}': the newest configuration "
                    f"has folds {found}, missing {missing} (dvc exp run --queue -S split.folds={folds} "
                    f"-S split.fold=...; dvc queue start)")


def region_columns(runs: pd.DataFrame) -> dict[str, str]:
    """Per-region per-case Dice columns (BraTS), when the runs have them."""
    return {key: f"test Dice per patient ({key[len(REGION_PREFIX):-len(REGION_SUFFIX)]})" for key in runs
            if key.startswith(REGION_PREFIX) and key.endswith(REGION_SUFFIX)}


def summarise(folds: pd.DataFrame) -> pd.DataFrame:
    """One row per fold, then the mean and sd over folds and the mean over all test patients."""
    columns = {**FOLD_METRICS, **region_columns(folds)}
    present = {key: name for key, name in columns.items() if key in folds}
    table = folds[list(present)].rename(columns=present).astype(float)
    patients = folds["metrics.test_patients"].astype(float).to_numpy()
    table.insert(0, "test patients", patients)
    table.insert(0, "fold", folds["fold"].astype(str).to_numpy())
    weighted = {name: float(np.average(table[name], weights=patients)) for name in table
                if name in PATIENT_COLUMNS or name.startswith("test Dice per patient (")}
    metric_names = list(table.columns[2:])
    rows = [
        {"fold": "mean over folds", **table[metric_names].mean().to_dict()},
        {"fold": "sd over folds", **table[metric_names].std(ddof=1).to_dict()},
        {"fold": f"all {int(patients.sum())} patients", "test patients": patients.sum(), **weighted},
    ]
    table["DVC experiment"] = folds.get("tags.dvc_experiment", pd.Series(np.nan, index=folds.index)).to_numpy()
    table["MLflow run"] = folds["run_id"].to_numpy()
    summary = pd.concat([table, pd.DataFrame(rows)], ignore_index=True)
    return summary.astype({"test patients": "Int64"})


def cv_summary(folds: int, run_name: str = "train") -> pd.DataFrame:
    """The summary table of the newest complete ``folds``-fold cross-validation in the store."""
    if folds < 2:
        raise DataError(f"--folds must be at least 2 (got {folds})")
    runs = tracking.search_runs(f"params.`split.folds` = '{folds}'")
    return summarise(complete_folds(runs, folds, run_name))


def to_markdown(table: pd.DataFrame) -> str:
    shown = table.astype(object).where(table.notna(), None)
    return shown.to_markdown(index=False, floatfmt=".3f", missingval="")
