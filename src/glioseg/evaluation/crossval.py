"""Cross-validation by patient or by site: one summary over the fold runs of a configuration.

With ``split.folds: k`` every fold is its own experiment (``dvc exp run --queue -S
split.folds=5 -S split.fold=0,1,2,3,4``), trained and evaluated as one MLflow run. This module
finds those runs in the MLflow store and summarises them: each fold's test metrics, their mean
and standard deviation over the folds, and the per-patient metrics averaged over all patients.
Each patient is in exactly one test fold, so that last row is the out-of-fold mean over the
whole data set (the figure Buda et al. report for their 22 folds; not for validation folds,
``split.fold_is: val``, whose models all test the same held-out patients), given with a bootstrap interval
over those patients from the per-patient tables evaluate logs with each run. Leave-one-site-out
runs (``split.by: site``, one per site) are summarised the same way, one row per held-out site.
A fold's numbers are its run's evaluation with the inference settings its model carries (an
evaluation with others is a run nested under it, never the fold's result).

Runs are folds of one configuration when they have the same run name (``train`` or
``sweep-NAME``) and the same logged params, apart from ``split.fold`` and the settings in
:data:`glioseg.tracking.folds.RUN_SETTINGS`, which change where and how fast a run goes but not what it trains.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from glioseg import metrics
from glioseg.tracking import store as tracking
from glioseg.tracking.folds import newest_cross_validation

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
CI_LOW, CI_HIGH = "metrics.test_ci95.dice_patient_mean.low", "metrics.test_ci95.dice_patient_mean.high"
CI_COLUMNS = {CI_LOW: "Dice per patient 95% CI low", CI_HIGH: "Dice per patient 95% CI high"}


def region_columns(runs: pd.DataFrame) -> dict[str, str]:
    """Per-region per-case Dice columns (BraTS), when the runs have them."""
    return {
        key: f"test Dice per patient ({key[len(REGION_PREFIX) : -len(REGION_SUFFIX)]})"
        for key in runs
        if key.startswith(REGION_PREFIX) and key.endswith(REGION_SUFFIX)
    }


def summarise(folds: pd.DataFrame, per_patient: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per fold, then the mean and sd over folds and the mean over all test patients.

    ``per_patient`` (the folds' test tables together: ``patient``, ``dice``) gives the last row its
    bootstrap interval over all patients; each fold's own interval comes from its metrics.
    """
    columns = {**FOLD_METRICS, **region_columns(folds)}
    present = {key: name for key, name in columns.items() if key in folds}
    table = folds[list(present)].rename(columns=present).astype(float)
    for key, name in CI_COLUMNS.items():
        if key in folds:
            table[name] = folds[key].astype(float).to_numpy()
    patients = folds["metrics.test_patients"].astype(float).to_numpy()
    table.insert(0, "test patients", patients)
    if "tags.test_site" in folds:
        table.insert(0, "test site", folds["tags.test_site"].to_numpy())
    table.insert(0, "fold", folds["fold"].astype(str).to_numpy())
    weighted = {
        name: float(np.average(table[name], weights=patients))
        for name in table
        if name in PATIENT_COLUMNS or name.startswith("test Dice per patient (")
    }
    if per_patient is not None:
        interval = metrics.mean_interval(per_patient.groupby("patient")["dice"].mean())
        weighted |= {CI_COLUMNS[CI_LOW]: interval["low"], CI_COLUMNS[CI_HIGH]: interval["high"]}
    metric_names = [name for name in table.columns if name not in ("fold", "test site", "test patients")]
    rows = [
        {"fold": "mean over folds", **table[metric_names].mean().to_dict()},
        {"fold": "sd over folds", **table[metric_names].std(ddof=1).to_dict()},
    ]
    if not validation_folds(folds):
        rows.append({"fold": f"all {int(patients.sum())} patients", "test patients": patients.sum(), **weighted})
    for row in rows[:2]:
        for name in CI_COLUMNS.values():
            row.pop(name, None)  # an interval is not averaged over folds
    table["DVC experiment"] = folds.get("tags.dvc_experiment", pd.Series(np.nan, index=folds.index)).to_numpy()
    table["MLflow run"] = folds["run_id"].to_numpy()
    summary = pd.concat([table, pd.DataFrame(rows)], ignore_index=True)
    return summary.astype({"test patients": "Int64"})


def validation_folds(folds: pd.DataFrame) -> bool:
    """Whether the folds were validation folds (``split.fold_is: val``): every fold model tested the same
    held-out patients, so there is no out-of-fold mean over all patients."""
    return "params.split.fold_is" in folds and bool((folds["params.split.fold_is"] == "val").all())


def out_of_fold_patients(folds: pd.DataFrame) -> pd.DataFrame | None:
    """The per-patient test tables the fold runs logged, together (each patient once); None when a
    run has none (evaluated by an older glioseg), and the summary then has no overall interval."""
    artifact = tracking.PER_PATIENT_ARTIFACT.format(subset="test")
    texts = [tracking.load_run_text(run_id, artifact) for run_id in folds["run_id"]]
    if any(text is None for text in texts):
        return None
    return pd.concat([pd.read_csv(io.StringIO(text)) for text in texts], ignore_index=True)


def cv_summary(folds: int, run_name: str = "train", by: str = "patient") -> pd.DataFrame:
    """The summary table of the newest complete cross-validation in the store."""
    chosen = newest_cross_validation(folds, run_name, by)
    return summarise(chosen, None if validation_folds(chosen) else out_of_fold_patients(chosen))


def to_markdown(table: pd.DataFrame) -> str:
    shown = table.astype(object).where(table.notna(), None)
    return shown.to_markdown(index=False, floatfmt=".3f", missingval="")
