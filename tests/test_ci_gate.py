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
NUMERICS = ("bf16-avx512", "fp32-avx512", "bf16-avx512_amx", "fp32-avx512_amx", "fp32-avx2")


def test_every_ci_data_kind_has_a_baseline_per_precision_and_cpu_capability_that_records_both():
    assert {b.stem for b in BASELINES} == {f"baseline-{kind}-{numerics}" for kind in ("real", "synthetic", "brats")
                                           for numerics in NUMERICS}
    for baseline in BASELINES:
        protocol = json.loads(baseline.read_text())["test"]["protocol"]
        recorded = [protocol["training_precision"], protocol["training_kernels"]]
        assert baseline.stem.split("-")[2:] == recorded, baseline.name


@pytest.mark.parametrize(("baseline", "key", "ours", "refusal"), [
    ("real-bf16-avx512", "training_precision", "fp32", r"trained in fp32, but .*bf16-avx512\.json in bf16"),
    ("real-fp32-avx512", "training_kernels", "avx2",
     r"trained with avx2 kernels, but .*fp32-avx512\.json with avx512 kernels"),
], ids=["precision", "kernels"])
def test_metrics_are_never_gated_against_a_baseline_of_other_numerics(tmp_path, baseline, key, ours, refusal):
    baseline = CI / f"baseline-{baseline}.json"
    metrics = json.loads(baseline.read_text())
    current = tmp_path / "test.json"
    metrics["test"]["protocol"][key] = ours
    current.write_text(json.dumps(metrics))
    with pytest.raises(DataError, match=r"test\.json: " + refusal):
        check_metrics(current, baseline, CI / "floors.yaml")
    # Metrics that do not record it (older files, or a model of unknown numerics) are still gated.
    metrics["test"]["protocol"][key] = "unknown"
    current.write_text(json.dumps(metrics))
    assert check_metrics(current, baseline, CI / "floors.yaml")[0]
    del metrics["test"]["protocol"][key]
    current.write_text(json.dumps(metrics))
    assert check_metrics(current, baseline, CI / "floors.yaml")[0]
