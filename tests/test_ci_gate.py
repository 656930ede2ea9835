"""The committed CI gate (ci/floors.yaml + baselines) passes on the baseline and fails on a worse model."""

import copy
import json
from pathlib import Path

import pytest

from glioseg.check_metrics import check_metrics

CI = Path(__file__).resolve().parents[1] / "ci"
BASELINES = sorted(CI.glob("baseline-*.json"))


@pytest.mark.parametrize("baseline", BASELINES, ids=[b.stem for b in BASELINES])
def test_gate_passes_on_baseline_and_fails_on_a_worse_model(baseline, tmp_path):
    metrics = json.loads(baseline.read_text())
    same = tmp_path / "same.json"
    same.write_text(json.dumps(metrics))
    passed, table = check_metrics(same, baseline, CI / "floors.yaml")
    assert passed, table

    worse = copy.deepcopy(metrics)
    worse["test"]["dice_patient_mean"] -= 0.05
    worse_path = tmp_path / "worse.json"
    worse_path.write_text(json.dumps(worse))
    passed, table = check_metrics(worse_path, baseline, CI / "floors.yaml")
    assert not passed
    assert "test.dice_patient_mean" in table


def test_every_ci_data_kind_has_a_baseline():
    assert {b.stem for b in BASELINES} >= {"baseline-real", "baseline-synthetic"}
