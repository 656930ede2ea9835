"""Pool the folds of GPU cross-validations: ``python -m gpu.cv_pool RESULT.json ...``.

Each file is one :mod:`gpu.seed_protocol` result (one fold, ``--set split.folds=k --set
split.fold=f``). Results of one configuration (the same profile and overrides apart from
``split.fold``) are pooled as ``glioseg cv-summary`` pools MLflow fold runs: the per-patient test
Dice over all patients, each tested once, with its seeded bootstrap interval over patients. A
configuration whose folds are incomplete, or whose folds test a patient twice, is a one-line error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from glioseg import metrics
from glioseg.errors import DataError
from glioseg.tracking.folds import RUN_SETTINGS

IGNORED_KEYS = (*RUN_SETTINGS, "split.folds")
REQUIRED = ("params", "overrides", "training_seconds", "test_per_patient")


def configuration(result: dict[str, Any]) -> str:
    """The profile and its overrides, less those that pick the fold or only change how a run executes."""
    kept = [item for item in result["overrides"] if item.partition("=")[0] not in IGNORED_KEYS]
    return " ".join([Path(result["params"]).name, *kept])


def fold_count(result: dict[str, Any]) -> int:
    counts = [int(item.partition("=")[2]) for item in result["overrides"] if item.startswith("split.folds=")]
    return counts[-1] if counts else 0


def pool(results: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per configuration: folds, patients, out-of-fold per-patient Dice and its interval,
    mean training seconds per fold."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        groups.setdefault(configuration(result), []).append(result)
    rows = []
    for name, folds in groups.items():
        expected = fold_count(folds[0])
        if expected < 2 or len(folds) != expected:
            raise DataError(f"{name}: {len(folds)} fold result(s), expected split.folds={expected} (at least 2)")
        patients = pd.DataFrame([row for fold in folds for row in fold["test_per_patient"]])
        repeated = sorted(patients.loc[patients["patient"].duplicated(), "patient"].unique())
        if repeated:
            raise DataError(f"{name}: patients tested in more than one fold: {', '.join(repeated[:3])}")
        interval = metrics.mean_interval(patients["dice"].to_numpy())
        rows.append(
            {
                "configuration": name,
                "folds": expected,
                "patients": len(patients),
                "Dice per patient": float(patients["dice"].mean()),
                "95% CI low": interval["low"],
                "95% CI high": interval["high"],
                "training s per fold": float(pd.Series([fold["training_seconds"] for fold in folds]).mean()),
            }
        )
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpu.cv_pool", description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+", help="gpu.seed_protocol JSON files, one per fold")
    args = parser.parse_args(argv)
    try:
        results = []
        for path in args.results:
            try:
                results.append(json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError) as exc:
                raise DataError(f"{path}: not a readable seed-protocol result ({exc})") from None
            missing = [key for key in REQUIRED if key not in results[-1]]
            if missing:
                raise DataError(f"{path}: not a seed-protocol result with per-patient rows (no {', '.join(missing)})")
        table = pool(results)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(table.to_markdown(index=False, floatfmt=".3f"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
