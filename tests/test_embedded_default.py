"""The embedded default is evidence: a test split of 8 patients or more, tumour-free ones among them,
and main-model figures that agree across the CPU classes whose CI baselines it has."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from glioseg.config.schema import Params
from glioseg.pipeline.runner import stage_function

PROJECT = Path(__file__).resolve().parents[1]


def test_the_default_test_split_has_eight_patients_some_without_tumour(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = Params()
    for stage in ("download", "clean", "labels", "split"):
        stage_function(stage)(params)
    split, labels = pd.read_csv("data/split.csv"), pd.read_csv("data/labels.csv")
    tumour = labels.groupby("patient")["tumour_pixels"].sum()
    test = split.loc[split["subset"] == "test", "patient"].unique()
    assert len(test) >= 8
    assert 0 < int((tumour[test] == 0).sum()) < len(test)


def test_the_synthetic_baselines_of_every_precision_and_kernel_agree():
    baselines = {
        path.stem.removeprefix("baseline-synthetic-"): json.loads(path.read_text())["test"]
        for path in sorted((PROJECT / "ci").glob("baseline-synthetic-*.json"))
    }
    assert {"bf16-avx512", "fp32-avx512", "fp32-avx2"} <= set(baselines)
    dice = {kind: test["dice_patient_mean"] for kind, test in baselines.items()}
    assert all(test["patients"] >= 8 for test in baselines.values())
    assert min(dice.values()) >= 0.85, dice
    assert max(dice.values()) - min(dice.values()) <= 0.05, dice


def test_the_committed_metrics_are_the_synthetic_gate_of_the_class_that_made_them():
    """metrics/test.json and the CI synthetic gate come from the same params: their figures agree."""
    committed = json.loads((PROJECT / "metrics/test.json").read_text())["test"]
    protocol = committed["protocol"]
    kind = f"{protocol['training_precision']}-{protocol['training_kernels']}"
    baseline = json.loads((PROJECT / f"ci/baseline-synthetic-{kind}.json").read_text())["test"]
    assert committed["patients"] == baseline["patients"]
    assert committed["dice_patient_mean"] == baseline["dice_patient_mean"]
