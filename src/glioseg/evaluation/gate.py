"""The CI gate: compare current metrics with a baseline under per-metric floors.

The rules file maps a metric (dotted key of the flattened metrics JSON) to an absolute floor
``min``, an allowed drop below the baseline ``tolerance``, or both (the higher floor wins)::

    dice_patient_mean: {tolerance: 0.02}
    dice_positive_slice_mean: {min: 0.5}

``python -m glioseg.evaluation.gate`` is the gate of ``ci/real_data_check.sh`` (:func:`main`).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from glioseg.config.numerics import TRAINING_NUMERICS, UNKNOWN
from glioseg.config.schema import flatten
from glioseg.errors import ConfigError, DataError, GliosegError
from glioseg.io import read_yaml

RULE_KEYS = ("min", "tolerance")
COLUMNS = ["metric", "baseline", "current", "delta", "floor", "ok", "note"]
# Absorbs float rounding in ``baseline - tolerance`` so a value exactly at the floor passes.
SLACK = 1e-12


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None when it is not a finite JSON/YAML number (bools and strings are not)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _rule(path: Path, metric: str, rule: Any) -> dict[str, float]:
    if not isinstance(rule, dict) or not rule:
        raise ConfigError(f"{path}: metric '{metric}': expected {{min: ...}} and/or {{tolerance: ...}}")
    parsed = {}
    for key, value in rule.items():
        if key not in RULE_KEYS:
            raise ConfigError(f"{path}: metric '{metric}': unknown key '{key}' (expected min or tolerance)")
        # PyYAML (YAML 1.1) reads a bare 5e-2 as a string: rules take numeric strings, metrics do not.
        number = _number(float(value) if isinstance(value, str) and _is_float(value) else value)
        if number is None:
            raise ConfigError(f"{path}: metric '{metric}': '{key}' must be a number (got {value!r})")
        if key == "tolerance" and number < 0:
            raise ConfigError(f"{path}: metric '{metric}': 'tolerance' must be >= 0 (got {value!r})")
        parsed[key] = number
    return parsed


def load_floors(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """The rules file as ``{metric: {"min": ..., "tolerance": ...}}`` (either key may be absent)."""
    path = Path(path)
    raw = read_yaml(path, "metric rules file")
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: expected a mapping of metric -> {{min|tolerance: number}}")
    return {str(metric): _rule(path, str(metric), rule) for metric, rule in raw.items()}


def load_metrics(path: str | os.PathLike) -> dict[str, Any]:
    """A metrics JSON file, nested dicts flattened to dotted keys."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: metrics file not found")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a JSON object of metrics")
    return flatten(raw)


def _value(metrics: dict[str, Any], metric: str, source: str, notes: list[str]) -> float | None:
    """The metric as a finite float; None (with a note why) when it is absent or not a number."""
    if metric not in metrics:
        notes.append(f"missing from {source}")
        return None
    number = _number(metrics[metric])
    if number is None:
        notes.append(f"not a finite number in {source} ({metrics[metric]!r})")
    return number


def _row(metric: str, rule: dict[str, float], current: dict[str, Any], baseline: dict[str, Any]) -> dict:
    notes: list[str] = []
    floors = [rule["min"]] if "min" in rule else []
    if "tolerance" in rule:
        base = _value(baseline, metric, "baseline", notes)
        if base is not None:
            floors.append(base - rule["tolerance"])
    else:
        base = _number(baseline.get(metric))
    value = _value(current, metric, "current metrics", notes)
    floor = max(floors) if floors else None
    ok = False
    if not notes:
        # No note: the metric is a number, and its rule gave a floor (a "min", or a baseline for its "tolerance").
        assert value is not None and floor is not None
        ok = value >= floor - SLACK
        if not ok:
            notes.append(f"below floor by {floor - value:.4g}")
    return {
        "metric": metric,
        "baseline": base,
        "current": value,
        "delta": value - base if value is not None and base is not None else None,
        "floor": floor,
        "ok": ok,
        "note": "; ".join(notes),
    }


def compare(current: dict, baseline: dict, rules: dict[str, dict[str, float]]) -> pd.DataFrame:
    """One row per rule (as :func:`load_floors` returns them): ``ok`` when current >= floor.

    A metric missing (or not a finite number) in the current metrics, or missing from the baseline
    when its rule needs the baseline, fails with a ``note`` saying so.
    """
    current, baseline = flatten(current), flatten(baseline)
    rows = [_row(metric, rule, current, baseline) for metric, rule in rules.items()]
    return pd.DataFrame(rows, columns=COLUMNS)


def to_markdown(table: pd.DataFrame) -> str:
    """The comparison for a CI log or PR comment; absent values show as ``-``."""
    shown = table.assign(ok=table["ok"].map({True: "pass", False: "FAIL"})).astype(object)
    return shown.where(shown.notna(), None).to_markdown(index=False, floatfmt=".4f", missingval="-")


def check_metrics(
    metrics_path: str | os.PathLike, baseline_path: str | os.PathLike, rules_path: str | os.PathLike
) -> tuple[bool, str]:
    """Whether every rule passes, and the comparison as a markdown table.

    Metrics and baseline must come from the same training precision and kernels where both record
    them (``test.protocol.training_precision`` and ``training_kernels``, :mod:`glioseg.config.numerics`).
    """
    rules = load_floors(rules_path)
    current, baseline = load_metrics(metrics_path), load_metrics(baseline_path)
    check_same_numerics(current, baseline, metrics_path, baseline_path)
    table = compare(current, baseline, rules)
    return bool(table["ok"].all()), to_markdown(table)


# How an error names each of TRAINING_NUMERICS: "trained in fp32", "trained with avx2 kernels".
NUMERICS_WORDING = {"training_precision": "in {}", "training_kernels": "with {} kernels"}


def training_numerics(metrics: dict) -> dict[str, str]:
    """The precision and kernels the metrics' model trained with, from nested or flattened metrics;
    those not recorded (older files, or ``unknown``) are left out."""
    flat = flatten(metrics)
    recorded = {key: flat.get(f"test.protocol.{key}") for key in TRAINING_NUMERICS}
    return {key: str(value) for key, value in recorded.items() if value not in (None, UNKNOWN)}


def check_same_numerics(
    current: dict, baseline: dict, metrics_path: str | os.PathLike, baseline_path: str | os.PathLike
) -> None:
    ours, theirs = training_numerics(current), training_numerics(baseline)
    for key in ours.keys() & theirs.keys():
        if ours[key] != theirs[key]:
            mine, other = (NUMERICS_WORDING[key].format(value) for value in (ours[key], theirs[key]))
            raise DataError(
                f"{metrics_path}: trained {mine}, but {baseline_path} {other}; compare with a baseline trained {mine}"
            )


def ci_files(ci_dir: str | os.PathLike, kind: str, precision: str, capability: str) -> tuple[Path, Path]:
    """A CI gate's baseline, ``ci/baseline-KIND-PRECISION-CAPABILITY.json``, and its rules,
    ``ci/floors-KIND.yaml``, or ``ci/floors.yaml`` where the kind has none."""
    ci_dir = Path(ci_dir)
    rules = ci_dir / f"floors-{kind}.yaml"
    if not rules.is_file():
        rules = ci_dir / "floors.yaml"
    return ci_dir / f"baseline-{kind}-{precision}-{capability}.json", rules


def ci_gate(
    metrics_path: str | os.PathLike, ci_dir: str | os.PathLike, kind: str, precision: str, capability: str
) -> tuple[bool, str]:
    """Whether one gate of ci/real_data_check.sh passes, and its comparison as a markdown table.

    A machine whose CPU class (with its precision) has no baseline, an ARM one say, is gated on the
    rules' absolute floors (``min``) alone, and the comparison opens with a line saying so: another
    class's baseline cannot stand in, as the kernels move the numbers by more than any tolerance
    (docs/results.md).
    """
    baseline, rules_path = ci_files(ci_dir, kind, precision, capability)
    if baseline.is_file():
        return check_metrics(metrics_path, baseline, rules_path)
    floors = {metric: {"min": rule["min"]} for metric, rule in load_floors(rules_path).items() if "min" in rule}
    if not floors:
        raise ConfigError(f"{rules_path}: no min floors to gate CPU class {capability} on without its baseline")
    table = compare(load_metrics(metrics_path), {}, floors)
    shown = Path(ci_dir).name
    notice = (
        f"ci: no same-class baseline {shown}/{baseline.name} (CPU class {capability}, {precision}): gated on "
        f"the min floors of {shown}/{rules_path.name} only"
    )
    return bool(table["ok"].all()), f"{notice}\n{to_markdown(table)}"


def main(argv: list[str] | None = None) -> int:
    """``python -m glioseg.evaluation.gate METRICS CI_DIR KIND PRECISION CAPABILITY``: :func:`ci_gate`,
    printed; exit status 1 when it fails, 2 on a user error (as ``glioseg check-metrics``)."""
    try:
        passed, report = ci_gate(*(sys.argv[1:] if argv is None else argv))
    except GliosegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report)
    print("metrics check: " + ("passed" if passed else "FAILED"))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
