"""Every path the pipeline reads or writes, relative to the repository root, in one place.

dvc.yaml names the same paths; stages call these so that code and pipeline cannot drift.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA = Path("data")
PARAMS_VALID = DATA / "params.valid"
RAW = DATA / "raw"
MANIFEST = RAW / "manifest.csv"
REMOVED = DATA / "removed.csv"
LABELS = DATA / "labels.csv"
SPLIT = DATA / "split.csv"
CACHE = DATA / "cache" / "slices.npz"
AUGMENT = DATA / "augment.json"
AUGMENT_PREVIEW = DATA / "augment_preview.png"

MODELS = Path("models")
MODEL = MODELS / "model.pt"
TRAIN_METRICS = MODELS / "train.json"
TRAIN_HISTORY = MODELS / "history.csv"

METRICS = Path("metrics")
TEST_METRICS = METRICS / "test.json"

RUNS = Path("runs")

REPORTS = Path("reports")
REPORT = REPORTS / "report.md"
FIGURES = REPORTS / "figures"
EVALUATION = REPORTS / "evaluation"


def repo_root() -> Path:
    """The repository root: DVC's DVC_ROOT inside a stage (also for queued/temp experiments)."""
    return Path(os.environ.get("DVC_ROOT", ".")).resolve()


def raw_cases(folder: str) -> Path:
    """Where the download stage puts a format's cases (``DataFormat.raw_name``: kaggle_3m, brats)."""
    return RAW / folder


def sweep_dir(name: str) -> Path:
    return RUNS / name
