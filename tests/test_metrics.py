import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from glioseg import metrics
from glioseg.metrics import (
    accuracy,
    confusion_per_item,
    dice,
    hausdorff95,
    iou,
    precision,
    sensitivity,
    specificity,
    summarise,
)


def Counts(tp, fp, fn, tn):  # noqa: N802 - reads as the (tp, fp, fn, tn) record it builds
    return np.array([tp, fp, fn, tn])


def confusion(pred, truth):
    """Counts of one prediction over all its pixels."""
    return metrics.confusion_per_item(np.asarray(pred)[None], np.asarray(truth)[None])[0]


def masks(truth_pixels, pred_pixels, shape=(4, 4)):
    truth, pred = np.zeros(shape, dtype=np.uint8), np.zeros(shape, dtype=np.uint8)
    for pixel in truth_pixels:
        truth[pixel] = 1
    for pixel in pred_pixels:
        pred[pixel] = 1
    return pred, truth


# --- confusion -----------------------------------------------------------------------------------


def test_confusion_counts_known_masks():
    # Truth 4 px, prediction 2 px, both inside the truth: tp 2, fp 0, fn 2, tn 16 - 4 = 12.
    pred, truth = masks([(0, 0), (0, 1), (1, 0), (1, 1)], [(0, 0), (0, 1)])
    np.testing.assert_array_equal(confusion(pred, truth), Counts(tp=2, fp=0, fn=2, tn=12))


def test_confusion_accepts_tensors_and_any_nonzero_as_positive():
    pred = torch.tensor([[True, False], [True, False]])
    truth = torch.tensor([[255, 255], [0, 0]], dtype=torch.uint8)
    counts = metrics.confusion_per_item(pred[None], truth[None])[0]
    np.testing.assert_array_equal(counts, Counts(tp=1, fp=1, fn=1, tn=1))
    assert counts.dtype == np.int64


def test_confusion_per_item_sums_all_but_first_axis():
    truth = np.zeros((2, 1, 2, 3), dtype=bool)
    pred = np.zeros((2, 1, 2, 3), dtype=bool)
    truth[0, 0, 0, :] = True  # item 0: 3 tumour px, 1 of them predicted, plus 1 false positive
    pred[0, 0, 0, 0] = pred[0, 0, 1, 2] = True
    # item 1: empty truth and empty prediction
    np.testing.assert_array_equal(confusion_per_item(pred, truth), [[1, 1, 2, 2], [0, 0, 0, 6]])


def test_confusion_per_item_empty_batch():
    assert confusion_per_item(np.zeros((0, 4, 4)), np.zeros((0, 4, 4))).shape == (0, 4)


def test_confusion_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        confusion(np.zeros((2, 2)), np.zeros((2, 3)))


# --- ratios --------------------------------------------------------------------------------------


def test_ratios_on_known_masks():
    counts = Counts(tp=2, fp=0, fn=2, tn=12)
    assert dice(counts) == pytest.approx(2 * 2 / (4 + 2))  # 0.667
    assert iou(counts) == pytest.approx(0.5)
    assert precision(counts) == 1.0
    assert sensitivity(counts) == pytest.approx(0.5)
    assert specificity(counts) == 1.0
    assert accuracy(counts) == pytest.approx(14 / 16)


def test_ratios_with_false_positives():
    counts = Counts(tp=2, fp=2, fn=2, tn=10)
    assert dice(counts) == pytest.approx(4 / 8)
    assert iou(counts) == pytest.approx(2 / 6)
    assert precision(counts) == pytest.approx(0.5)
    assert specificity(counts) == pytest.approx(10 / 12)


def test_both_empty_scores_empty_value():
    counts = Counts(tp=0, fp=0, fn=0, tn=16)
    for metric in (dice, iou, precision, sensitivity):
        assert metric(counts) == 1.0
        assert math.isnan(metric(counts, empty=np.nan))
    assert specificity(counts) == 1.0
    assert accuracy(counts) == 1.0


def test_empty_truth_with_prediction_scores_zero_overlap():
    counts = Counts(tp=0, fp=3, fn=0, tn=13)
    assert dice(counts) == 0.0
    assert iou(counts) == 0.0
    assert precision(counts) == 0.0
    assert sensitivity(counts) == 1.0  # nothing to find
    assert math.isnan(sensitivity(counts, empty=np.nan))
    assert specificity(counts) == pytest.approx(13 / 16)


def test_missed_tumour_with_empty_prediction_scores_zero():
    counts = Counts(tp=0, fp=0, fn=4, tn=12)
    assert dice(counts) == 0.0
    assert iou(counts) == 0.0
    assert precision(counts) == 0.0  # no predicted positives, but the truth is not empty
    assert sensitivity(counts) == 0.0


def test_all_tumour_truth_specificity_is_empty_value():
    assert specificity(Counts(tp=4, fp=0, fn=0, tn=0)) == 1.0
    assert accuracy(Counts(tp=0, fp=0, fn=0, tn=0)) == 1.0


def test_ratios_are_vectorised():
    counts = np.array([[2, 0, 2, 12], [0, 0, 0, 16], [0, 3, 0, 13]])
    np.testing.assert_allclose(dice(counts), [2 / 3, 1.0, 0.0])
    np.testing.assert_allclose(iou(counts, empty=np.nan), [0.5, np.nan, 0.0])
    np.testing.assert_allclose(precision(counts), [1.0, 1.0, 0.0])
    assert isinstance(dice(Counts(1, 0, 0, 0)), float)


def test_ratios_reject_wrong_count_shape():
    with pytest.raises(ValueError, match="last axis of 4"):
        dice(np.array([1, 2, 3]))


# --- summarise -----------------------------------------------------------------------------------

# Ten pixels per slice.
#   A/1: tp 3 fp 1 fn 1 tn 5   dice 6/8 = 0.75   iou 3/5 = 0.6   (positive)
#   A/2: all empty             dice 1            iou 1
#   B/3: tp 2 fp 0 fn 2 tn 6   dice 4/6          iou 2/4         (positive)
#   B/4: tp 0 fp 2 fn 0 tn 8   dice 0            iou 0           (empty truth, false alarm)
# Patient sums: A tp 3 fp 1 fn 1 tn 15 -> dice 0.75, iou 0.6
#               B tp 2 fp 2 fn 2 tn 14 -> dice 4/8 = 0.5, iou 2/6
# Pooled: tp 5 fp 3 fn 3 tn 29 (40 px).
PER_SLICE = pd.DataFrame(
    {
        "patient": ["A", "A", "B", "B"],
        "slice": [1, 2, 3, 4],
        "tp": [3, 0, 2, 0],
        "fp": [1, 0, 0, 2],
        "fn": [1, 0, 2, 0],
        "tn": [5, 10, 6, 8],
    }
)


def test_summarise_hand_built_two_patients():
    expected = {
        "dice_slice_mean": (0.75 + 1 + 2 / 3 + 0) / 4,
        "iou_slice_mean": (0.6 + 1 + 0.5 + 0) / 4,
        "dice_positive_slice_mean": (0.75 + 2 / 3) / 2,
        "iou_positive_slice_mean": (0.6 + 0.5) / 2,
        "dice_patient_mean": (0.75 + 0.5) / 2,
        "iou_patient_mean": (0.6 + 1 / 3) / 2,
        "dice_pooled": 10 / 16,
        "iou_pooled": 5 / 11,
        "pixel_accuracy": 34 / 40,
        "precision": 5 / 8,
        "sensitivity": 5 / 8,
        "specificity": 29 / 32,
        "slices": 4,
        "positive_slices": 2,
        "patients": 2,
    }
    summary = summarise(PER_SLICE)
    assert set(summary) == set(expected)
    for key, value in expected.items():
        assert summary[key] == pytest.approx(value), key
    assert all(type(summary[key]) is int for key in ("slices", "positive_slices", "patients"))
    assert all(type(value) in (int, float) for value in summary.values())
    json.dumps(summary)  # plain Python values


def test_summarise_patient_with_nothing_to_find_scores_one():
    empty_patient = pd.DataFrame({"patient": ["C", "C"], "slice": [1, 2], "tp": 0, "fp": 0, "fn": 0, "tn": 10})
    summary = summarise(pd.concat([PER_SLICE, empty_patient]))
    assert summary["dice_patient_mean"] == pytest.approx((0.75 + 0.5 + 1.0) / 3)
    assert summary["iou_patient_mean"] == pytest.approx((0.6 + 1 / 3 + 1.0) / 3)
    assert summary["patients"] == 3


def test_summarise_leaves_out_means_over_nothing():
    negatives = PER_SLICE[PER_SLICE["tp"] + PER_SLICE["fn"] == 0]
    summary = summarise(negatives)
    assert "dice_positive_slice_mean" not in summary
    assert "iou_positive_slice_mean" not in summary
    assert summary["positive_slices"] == 0
    assert summary["sensitivity"] == 1.0  # no tumour anywhere: nothing missed
    assert not any(isinstance(v, float) and math.isnan(v) for v in summary.values())

    nothing = summarise(PER_SLICE.iloc[:0])
    assert nothing == {"slices": 0, "positive_slices": 0, "patients": 0}


def test_summarise_requires_count_columns():
    with pytest.raises(ValueError, match="fn"):
        summarise(PER_SLICE.drop(columns="fn"))


# --- hausdorff95 ---------------------------------------------------------------------------------


def cube(start_x: int) -> np.ndarray:
    volume = np.zeros((10, 10, 10), dtype=bool)
    volume[start_x : start_x + 4, 2:6, 2:6] = True
    return volume


def test_hausdorff95_cubes_shifted_by_one_voxel():
    # 4x4x4 cubes at x 2..5 (truth) and 3..6 (prediction): 56 surface voxels each. From the
    # prediction: its far face x=6 (16 voxels) is 1 from the truth face x=5; its face x=3
    # centre (4 voxels) lies in the truth's interior, 1 from the truth surface; the other 36
    # lie on the truth surface. Symmetrically for the truth: 40 ones, 72 zeros in all, and
    # the 95th percentile (position 0.95 * 111 = 105.45) is 1.
    assert hausdorff95(cube(3), cube(2)) == pytest.approx(1.0)


def test_hausdorff95_uses_spacing():
    # Voxels 2 mm apart along x, 1 mm along y, z: the 32 far-face distances become 2 mm, the
    # 8 face-centre voxels are now nearer (1 mm) to the y/z sides: 72 zeros, 8 ones, 32 twos;
    # positions 105 and 106 of the sorted 112 are both 2.
    assert hausdorff95(cube(3), cube(2), spacing=(2.0, 1.0, 1.0)) == pytest.approx(2.0)


def test_hausdorff95_ignores_a_rare_outlier():
    # A 10x10 square (36 surface px) plus one far false-positive pixel: of the 73 surface
    # distances only one is non-zero, above the 95th percentile, so HD95 is 0 (HD would be ~30).
    truth = np.zeros((40, 40), dtype=bool)
    truth[5:15, 5:15] = True
    pred = truth.copy()
    pred[35, 35] = True
    assert hausdorff95(pred, truth) == 0.0
    assert hausdorff95(torch.from_numpy(pred), torch.from_numpy(truth)) == 0.0


def test_hausdorff95_empty_masks():
    # The raw distance: undefined (inf) when one mask is empty; means use penalised_hausdorff95.
    empty, full = np.zeros((4, 4, 4), dtype=bool), np.ones((4, 4, 4), dtype=bool)
    assert hausdorff95(empty, empty) == 0.0
    assert hausdorff95(empty, full) == math.inf
    assert hausdorff95(full, empty) == math.inf


def test_hausdorff95_squares_apart_by_a_known_distance():
    # Two 2x2 squares, columns 2-3 (truth) and 12-13 (prediction): every pixel is on the surface;
    # from each square two pixels are 9 from the other, two are 10. Sorted [9]*4 + [10]*4: the
    # 95th percentile (position 6.65) is 10.
    truth, pred = np.zeros((6, 16), dtype=bool), np.zeros((6, 16), dtype=bool)
    truth[2:4, 2:4] = True
    pred[2:4, 12:14] = True
    assert hausdorff95(pred, truth) == pytest.approx(10.0)
    assert metrics.penalised_hausdorff95(pred, truth) == (pytest.approx(10.0), metrics.HD95_DEFINED)


def test_hd95_penalty_is_the_grid_diagonal():
    assert metrics.hd95_penalty((2, 3, 6)) == pytest.approx(7.0)  # sqrt(4 + 9 + 36)
    assert metrics.hd95_penalty((2, 3, 6), spacing=(3.0, 1.0, 1.0)) == pytest.approx(9.0)  # sqrt(36 + 9 + 36)
    assert metrics.hd95_penalty((3, 4), spacing=2.0) == pytest.approx(10.0)


def one_voxel(shape, voxel) -> np.ndarray:
    volume = np.zeros(shape, dtype=bool)
    volume[voxel] = True
    return volume


def test_penalised_hausdorff95_of_a_missed_tumour_is_the_grid_diagonal():
    truth, empty = one_voxel((2, 3, 6), (1, 1, 1)), np.zeros((2, 3, 6), dtype=bool)
    assert metrics.hd95_status(empty, truth) == metrics.HD95_MISSED_TUMOUR
    value, status = metrics.penalised_hausdorff95(empty, truth)
    assert (value, status) == (pytest.approx(7.0), "missed_tumour")
    spaced, _ = metrics.penalised_hausdorff95(empty, truth, spacing=(3.0, 1.0, 1.0))
    assert spaced == pytest.approx(9.0)


def test_penalised_hausdorff95_of_a_false_positive_on_an_empty_case_is_the_grid_diagonal():
    pred, empty = one_voxel((2, 3, 6), (0, 2, 5)), np.zeros((2, 3, 6), dtype=bool)
    assert metrics.penalised_hausdorff95(pred, empty) == (pytest.approx(7.0), "false_positive")
    assert metrics.penalised_hausdorff95(torch.from_numpy(pred), torch.from_numpy(empty))[1] == "false_positive"


def test_penalised_hausdorff95_both_empty_is_zero_and_defined_is_the_distance():
    empty = np.zeros((2, 3, 6), dtype=bool)
    assert metrics.penalised_hausdorff95(empty, empty) == (0.0, "both_empty")
    # Single voxels at (0, 0, 0) and (1, 2, 2): sqrt(1 + 4 + 4) = 3 apart.
    truth, pred = one_voxel((2, 3, 6), (0, 0, 0)), one_voxel((2, 3, 6), (1, 2, 2))
    assert metrics.penalised_hausdorff95(pred, truth) == (pytest.approx(3.0), "defined")


def test_the_penalty_exceeds_any_defined_hd95_on_the_grid():
    # Opposite corners are as far apart as two voxels of the grid can be: sqrt(1 + 4 + 25) < 7.
    far = metrics.hausdorff95(one_voxel((2, 3, 6), (0, 0, 0)), one_voxel((2, 3, 6), (1, 2, 5)))
    assert far == pytest.approx(math.sqrt(30)) and far < metrics.hd95_penalty((2, 3, 6))


def test_hd95_status_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        metrics.penalised_hausdorff95(np.zeros((2, 2)), np.ones((2, 3)))


def test_summarise_hd95_counts_every_case_and_says_which_were_penalised():
    values = [3.0, 0.0, 7.0, 7.0, 2.0]
    statuses = ["defined", "both_empty", "missed_tumour", "false_positive", "defined"]
    summary = metrics.summarise_hd95(values, statuses)
    assert summary == {
        "hd95_patient_mean": pytest.approx(19 / 5),
        "hd95_defined_mean": pytest.approx(5 / 3),
        "hd95_defined_patients": 3,
        "hd95_missed_tumour": 1,
        "hd95_false_positive": 1,
    }
    assert all(type(summary[key]) is int for key in metrics.HD95_COUNT_KEYS)


def test_summarise_hd95_leaves_out_means_over_nothing_and_refuses_inf():
    assert metrics.summarise_hd95([7.0], ["missed_tumour"]) == {
        "hd95_patient_mean": 7.0,
        "hd95_defined_patients": 0,
        "hd95_missed_tumour": 1,
        "hd95_false_positive": 0,
    }
    assert metrics.summarise_hd95([], []) == {
        "hd95_defined_patients": 0,
        "hd95_missed_tumour": 0,
        "hd95_false_positive": 0,
    }
    with pytest.raises(ValueError, match="finite"):
        metrics.summarise_hd95([math.inf], ["missed_tumour"])


BRATS_REGIONS = {"whole_tumour": (1, 2, 3), "tumour_core": (1, 3), "enhancing_tumour": (3,)}


def test_region_confusion_scores_each_region_as_a_binary_mask():
    truth = np.array([[[0, 1], [2, 3]]])
    pred = np.array([[[0, 1], [1, 3]]])
    counts = metrics.region_confusion(pred, truth, BRATS_REGIONS)
    assert counts.shape == (1, 3, 4)
    assert counts[0].tolist() == [[3, 0, 0, 1], [2, 1, 0, 1], [1, 0, 0, 3]]
    assert metrics.dice(counts[0]).tolist() == pytest.approx([1.0, 0.8, 1.0])


def test_region_confusion_tensor_counts_as_the_numpy_path_on_the_tensors_device():
    truth = torch.tensor([[[0, 1], [2, 3]]], dtype=torch.uint8)
    pred = torch.tensor([[[0, 1], [1, 3]]], dtype=torch.uint8)
    counts = metrics.region_confusion_tensor(pred, truth, BRATS_REGIONS)
    assert counts.dtype == torch.int64 and counts.device == pred.device
    assert counts[0].tolist() == [[3, 0, 0, 1], [2, 1, 0, 1], [1, 0, 0, 3]]
    rng = np.random.default_rng(0)
    labels = [rng.integers(0, 4, size=(5, 9, 7), dtype=np.uint8) for _ in range(2)]
    for regions in (BRATS_REGIONS, {"tumour": (1,)}):
        expected = metrics.region_confusion(labels[0], labels[1], regions)
        got = metrics.region_confusion_tensor(*(torch.from_numpy(x) for x in labels), regions)
        np.testing.assert_array_equal(got.numpy(), expected)
    with pytest.raises(ValueError, match="differs from truth shape"):
        metrics.region_confusion_tensor(pred, truth[:, :1], BRATS_REGIONS)


def test_confusion_matrix_and_seed_style_metrics_on_known_labels():
    truth = np.array([0, 1, 2, 3])
    pred = np.array([0, 1, 1, 3])
    matrix = metrics.confusion_matrix(pred, truth, 4)
    assert matrix.tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]]
    seed = metrics.seed_style(matrix)
    # IoU per class: 1, 1/2, 0, 1 -> mean 0.625; one-hot: 3 right of 4, 11 true negatives of 12 negatives.
    assert seed == pytest.approx(
        {"mean_iou_classes": 0.625, "onehot_precision": 0.75, "onehot_sensitivity": 0.75, "onehot_specificity": 11 / 12}
    )


def test_mean_iou_skips_classes_absent_from_truth_and_prediction():
    matrix = metrics.confusion_matrix(np.array([0, 0, 1]), np.array([0, 0, 1]), 4)
    assert metrics.seed_style(matrix)["mean_iou_classes"] == pytest.approx(1.0)
