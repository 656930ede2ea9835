"""The committed CI gate (ci/floors.yaml + baselines) passes on the baseline and fails on a worse model."""

import copy
import json
from pathlib import Path

import pytest

from glioseg.check_metrics import check_metrics
from glioseg.errors import DataError

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

    widened = copy.deepcopy(metrics)
    widened["test"]["ci95"]["dice_patient_mean"]["low"] -= 0.1
    widened_path = tmp_path / "widened.json"
    widened_path.write_text(json.dumps(widened))
    passed, table = check_metrics(widened_path, baseline, CI / "floors.yaml")
    assert not passed, "a lower bound 0.1 down fails even with the point value unchanged"
    assert "test.ci95.dice_patient_mean.low" in table


# bf16 training needs native bf16 (AVX512-BF16 or AMX), so an AVX2 CPU trains in fp32 only.
NUMERICS = ("bf16-avx512", "fp32-avx512", "fp32-avx2")


def test_every_ci_data_kind_has_a_baseline_per_precision_and_cpu_capability_that_records_both():
    assert {b.stem for b in BASELINES} == {f"baseline-{kind}-{numerics}" for kind in ("real", "synthetic", "brats")
                                           for numerics in NUMERICS}
    for baseline in BASELINES:
        protocol = json.loads(baseline.read_text())["test"]["protocol"]
        recorded = [protocol["training_precision"], protocol["training_kernels"]]
        assert baseline.stem.split("-")[2:] == recorded, baseline.name


def test_metrics_of_one_precision_are_never_gated_against_a_baseline_of_the_other(tmp_path):
    bf16 = CI / "baseline-real-bf16-avx512.json"
    metrics = json.loads(bf16.read_text())
    metrics["test"]["protocol"]["training_precision"] = "fp32"
    current = tmp_path / "test.json"
    current.write_text(json.dumps(metrics))
    with pytest.raises(DataError, match=r"test\.json: trained in fp32, but .*baseline-real-bf16-avx512\.json in bf16"):
        check_metrics(current, bf16, CI / "floors.yaml")


def test_metrics_trained_with_other_cpu_kernels_are_never_gated_against_the_baseline(tmp_path):
    avx512 = CI / "baseline-real-fp32-avx512.json"
    metrics = json.loads(avx512.read_text())
    metrics["test"]["protocol"]["training_kernels"] = "avx2"
    current = tmp_path / "test.json"
    current.write_text(json.dumps(metrics))
    mixed = r"test\.json: trained with avx2 kernels, but .*avx512\.json with avx512 kernels"
    with pytest.raises(DataError, match=mixed):
        check_metrics(current, avx512, CI / "floors.yaml")
    # Metrics from before the kernels were recorded (or of an unknown model) are still gated.
    for unrecorded in ("unknown", None):
        if unrecorded is None:
            del metrics["test"]["protocol"]["training_kernels"]
        else:
            metrics["test"]["protocol"]["training_kernels"] = unrecorded
        current.write_text(json.dumps(metrics))
        assert check_metrics(current, avx512, CI / "floors.yaml")[0]
