"""Per-patient HD95 with its penalty, region summaries and the protocol every evaluation summary states.

Each patient is two 4x4 slices, so its evaluation grid is 2x4x4 and the HD95 penalty, the grid
diagonal, is sqrt(4 + 16 + 16) = 6.
"""

import json

import numpy as np
import pytest

from glioseg import metrics
from glioseg.data.cache import SliceArrays
from glioseg.evaluation import gate as check_metrics
from glioseg.evaluation.evaluate import per_patient_table, per_slice_table, region_summary, summarise

DIAGONAL = 6.0
TUMOUR = {"tumour": (1,)}


def volumes(cases: dict[str, tuple[list, list]]) -> tuple[SliceArrays, np.ndarray]:
    """Arrays and predictions of patients given as {patient: (truth voxels, predicted voxels)}.

    A voxel is (slice index, row, column, label); slices are numbered 1 and 2 per patient.
    """
    patients = list(cases)
    truth = np.zeros((2 * len(patients), 4, 4), dtype=np.uint8)
    pred = np.zeros_like(truth)
    for p, (truth_voxels, pred_voxels) in enumerate(cases.values()):
        for target, voxels in ((truth, truth_voxels), (pred, pred_voxels)):
            for z, y, x, label in voxels:
                target[2 * p + z, y, x] = label
    n = len(truth)
    arrays = SliceArrays(
        images=np.zeros((n, 4, 4, 1), dtype=np.uint8),
        masks=truth,
        distance=np.zeros(truth.shape, np.float16),
        patient=np.repeat(patients, 2),
        slice=np.tile([1, 2], len(patients)),
        subset=np.array(["test"] * n),
    )
    return arrays, pred


def tables(cases, regions=TUMOUR):
    arrays, pred = volumes(cases)
    per_slice = per_slice_table(arrays, pred, regions)
    return per_slice, per_patient_table(per_slice, arrays, pred, regions)


# A: voxels (0,0,0) and (0,0,3), 3 apart; B: (1,1,1) and (1,1,3), 2 apart; C: tumour, no prediction.
THREE_PATIENTS = {
    "A": ([(0, 0, 0, 1)], [(0, 0, 3, 1)]),
    "B": ([(1, 1, 1, 1)], [(1, 1, 3, 1)]),
    "C": ([(0, 2, 2, 1)], []),
}


def test_per_patient_hd95_is_penalised_and_has_its_status():
    _, per_patient = tables(THREE_PATIENTS)
    assert per_patient["patient"].tolist() == ["A", "B", "C"]
    assert per_patient["hd95"].tolist() == pytest.approx([3.0, 2.0, DIAGONAL])
    assert per_patient["hd95_status"].tolist() == ["defined", "defined", "missed_tumour"]


def test_region_summary_counts_a_missed_tumour_at_the_penalty():
    per_slice, per_patient = tables(THREE_PATIENTS)
    summary = region_summary(per_slice, per_patient)
    assert summary["hd95_patient_mean"] == pytest.approx((3.0 + 2.0 + DIAGONAL) / 3)
    assert summary["hd95_defined_mean"] == pytest.approx((3.0 + 2.0) / 2)
    counts = {key: summary[key] for key in metrics.HD95_COUNT_KEYS}
    assert counts == {"hd95_defined_patients": 2, "hd95_missed_tumour": 1, "hd95_false_positive": 0}
    assert all(type(value) is int for value in counts.values())


def test_missing_a_tumour_makes_the_mean_worse_not_better():
    per_slice, per_patient = tables(THREE_PATIENTS)
    found = dict(THREE_PATIENTS, C=([(0, 2, 2, 1)], [(0, 2, 3, 1)]))  # C found, 1 voxel off
    better = region_summary(*tables(found))
    assert better["hd95_patient_mean"] < region_summary(per_slice, per_patient)["hd95_patient_mean"]


def test_false_positive_on_an_empty_case_and_both_empty():
    per_slice, per_patient = tables(
        {
            "A": ([(0, 0, 0, 1)], [(0, 0, 3, 1)]),
            "D": ([], [(1, 3, 3, 1)]),
            "E": ([], []),
        }
    )
    assert per_patient["hd95"].tolist() == pytest.approx([3.0, DIAGONAL, 0.0])
    assert per_patient["hd95_status"].tolist() == ["defined", "false_positive", "both_empty"]
    summary = region_summary(per_slice, per_patient)
    assert summary["hd95_patient_mean"] == pytest.approx((3.0 + DIAGONAL + 0.0) / 3)
    assert summary["hd95_defined_mean"] == pytest.approx(1.5)
    assert (summary["hd95_defined_patients"], summary["hd95_missed_tumour"], summary["hd95_false_positive"]) == (
        2,
        0,
        1,
    )


def test_one_region_summary_states_its_protocol_with_the_tables_case_counts():
    per_slice, per_patient = tables(THREE_PATIENTS)
    summary = summarise(per_slice, per_patient)
    protocol = summary["protocol"]
    assert protocol["cases"] == {"slices": len(per_slice), "positive_slices": 3, "patients": len(per_patient)}
    assert protocol["cases"] == {key: summary[key] for key in ("slices", "positive_slices", "patients")}
    assert set(protocol["aggregation"]) == {
        "slice_mean",
        "positive_slice_mean",
        "patient_mean",
        "pooled",
        "hd95_patient_mean",
    }
    assert protocol["empty_mask_rule"] == metrics.EMPTY_MASK_RULE
    assert "diagonal" in protocol["hd95"]
    assert json.loads(json.dumps(summary)) == summary


# Regions whole {1, 2} and core {2}. Per region (grid diagonal 6):
#   A: 2 at (0,0,0), predicted 2 at (0,0,3)        whole 3 defined       core 3 defined
#   B: 1 at (1,1,1), predicted 2 at (1,1,3)        whole 2 defined       core: no truth -> false positive
#   C: 2 at (0,2,2), nothing predicted             whole missed          core missed
#   D: no tumour, predicted 2 at (0,1,1)           whole false positive  core false positive
FOUR_PATIENTS = {
    "A": ([(0, 0, 0, 2)], [(0, 0, 3, 2)]),
    "B": ([(1, 1, 1, 1)], [(1, 1, 3, 2)]),
    "C": ([(0, 2, 2, 2)], []),
    "D": ([], [(0, 1, 1, 2)]),
}
REGIONS = {"whole": (1, 2), "core": (2,)}


def test_several_regions_keep_their_counts_per_region_and_average_only_the_means():
    summary = summarise(*tables(FOUR_PATIENTS, REGIONS))
    whole, core = summary["regions"]["whole"], summary["regions"]["core"]
    assert (whole["hd95_defined_patients"], whole["hd95_missed_tumour"], whole["hd95_false_positive"]) == (2, 1, 1)
    assert (core["hd95_defined_patients"], core["hd95_missed_tumour"], core["hd95_false_positive"]) == (1, 1, 2)
    assert whole["hd95_patient_mean"] == pytest.approx((3 + 2 + 6 + 6) / 4)
    assert core["hd95_patient_mean"] == pytest.approx((3 + 6 + 6 + 6) / 4)
    assert summary["hd95_patient_mean"] == pytest.approx((17 / 4 + 21 / 4) / 2)
    assert summary["hd95_defined_mean"] == pytest.approx((2.5 + 3.0) / 2)
    assert not set(metrics.HD95_COUNT_KEYS) & set(summary)
    assert (summary["slices"], summary["patients"]) == (8, 4)
    assert "regions" in summary["protocol"]["aggregation"]
    assert summary["protocol"]["cases"] == {"slices": 8, "positive_slices": {"whole": 3, "core": 2}, "patients": 4}
    json.dumps(summary)


def test_the_ci_gate_reads_a_summary_with_its_protocol():
    summary = summarise(*tables(THREE_PATIENTS))
    rules = {"dice_patient_mean": {"min": 0.0}, "protocol.cases.patients": {"min": 3}, "protocol.hd95": {"min": 0}}
    table = check_metrics.compare(
        {"test": summary}, {"test": summary}, {f"test.{metric}": rule for metric, rule in rules.items()}
    )
    assert table["ok"].tolist() == [True, True, False]
    assert "not a finite number" in table["note"].iloc[2]


# --- bootstrap intervals over patients -------------------------------------------------------------

# Perfect (Dice 1), half-right (Dice 2/3: 2 truth voxels, 1 found) and missed (Dice 0) patients.
MIXED = {
    "A": ([(0, 0, 0, 1), (1, 0, 0, 1)], [(0, 0, 0, 1), (1, 0, 0, 1)]),
    "B": ([(0, 1, 1, 1), (0, 1, 2, 1)], [(0, 1, 1, 1)]),
    "C": ([(0, 2, 2, 1)], []),
}


def test_intervals_are_seeded_resample_patients_and_contain_the_point_estimate():
    summary = summarise(*tables(MIXED))
    ci = summary["ci95"]
    for name in metrics.BOOTSTRAP_METRICS:
        assert ci[name]["low"] <= summary[name] <= ci[name]["high"], name
    assert summary["dice_patient_mean"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    # Three patients: a resample's mean Dice is a mean of three of {1, 2/3, 0}, within [0, 1] and not
    # always the point estimate; the same seed gives the same interval.
    assert 0 <= ci["dice_patient_mean"]["low"] < summary["dice_patient_mean"] < ci["dice_patient_mean"]["high"] <= 1
    assert summarise(*tables(MIXED))["ci95"] == ci
    assert summary["protocol"]["confidence_interval"] == metrics.BOOTSTRAP_RULE


def test_the_bootstrap_draws_whole_patients_with_the_seed():
    draws = metrics.patient_resamples(5, resamples=4, seed=3)
    assert draws.shape == (4, 5) and draws.min() >= 0 and draws.max() < 5
    np.testing.assert_array_equal(draws, metrics.patient_resamples(5, resamples=4, seed=3))
    assert not np.array_equal(draws, metrics.patient_resamples(5, resamples=4, seed=4))
    # identical patients: every resample gives the same mean, so the interval is that value
    assert metrics.mean_interval([0.7, 0.7, 0.7]) == pytest.approx({"low": 0.7, "high": 0.7})
    # two patients 0 and 1: resample means are 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4
    assert metrics.mean_interval([0.0, 1.0]) == {"low": 0.0, "high": 1.0}


def test_region_means_have_intervals_from_the_same_patient_draws():
    summary = summarise(*tables(FOUR_PATIENTS, REGIONS))
    assert set(summary["ci95"]) >= {"dice_patient_mean", "dice_pooled"}
    for region in REGIONS:
        region_ci = summary["regions"][region]["ci95"]["dice_patient_mean"]
        assert region_ci["low"] <= summary["regions"][region]["dice_patient_mean"] <= region_ci["high"]
    assert summary["ci95"]["dice_patient_mean"]["low"] <= summary["dice_patient_mean"]


def test_the_ci_gate_can_floor_the_intervals_lower_bound(tmp_path):
    summary = summarise(*tables(MIXED))
    low = summary["ci95"]["dice_patient_mean"]["low"]
    rules = {"test.ci95.dice_patient_mean.low": {"min": low + 0.01}, "test.dice_patient_mean": {"tolerance": 0.0}}
    table = check_metrics.compare({"test": summary}, {"test": summary}, rules).set_index("metric")
    assert not table.loc["test.ci95.dice_patient_mean.low", "ok"]
    assert table.loc["test.dice_patient_mean", "ok"]
    assert table.loc["test.ci95.dice_patient_mean.low", "current"] == pytest.approx(low)
