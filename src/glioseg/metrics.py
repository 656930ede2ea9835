"""Segmentation metrics from confusion counts, with the empty-mask rule in one place.

Masks are binary; any non-zero value counts as positive. Every metric takes counts (a
:class:`Counts`, or an array whose last axis is ``tp, fp, fn, tn``) and is vectorised over arrays.
Multi-class label maps are scored per *region*, a set of class labels (BraTS: whole tumour
{1,2,3}, tumour core {1,3}, enhancing {3}), each as a binary mask (:func:`region_confusion`);
:func:`seed_style` adds the one-hot pixel metrics the BraTS seeds report.

The empty-mask rule, for a ratio whose denominator is zero:

* Dice and IoU with empty truth **and** empty prediction give ``empty`` (1.0 by default: a
  correct "no tumour", as MONAI's ``DiceMetric(ignore_empty=False)``). nnU-Net instead reports
  NaN and leaves such cases out of its means; pass ``empty=np.nan`` for that convention. Empty
  truth with a non-empty prediction gives 0.
* Precision with no predicted positives gives ``empty`` when the truth is empty too, else 0.
* Sensitivity with empty truth gives ``empty``; specificity with no true negatives in the truth
  gives ``empty``; accuracy over zero pixels gives ``empty``.

HD95 has its own rule (:func:`penalised_hausdorff95`): both masks empty scores 0; a missed tumour
or a false positive on an empty case has no surface to measure to and scores a fixed worst case,
the diagonal of the evaluation grid, and is counted by kind so that no case drops out of a mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

COUNT_COLUMNS = ["tp", "fp", "fn", "tn"]


MaskLike = np.ndarray | torch.Tensor
CountsLike = np.ndarray | Sequence[int]  # (..., 4): tp, fp, fn, tn


def _as_bool(mask: MaskLike) -> np.ndarray:
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    return np.asarray(mask) != 0


def _as_bool_pair(pred: MaskLike, truth: MaskLike) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as boolean arrays, refused when their shapes differ (no metric compares those)."""
    pred, truth = _as_bool(pred), _as_bool(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    return pred, truth


def confusion_per_item(pred: MaskLike, truth: MaskLike) -> np.ndarray:
    """(N, 4) int64 counts ``tp, fp, fn, tn`` for batched masks, summed over all axes but the first."""
    pred, truth = _as_bool_pair(pred, truth)
    return _counts_by_item(pred, truth, np.stack).astype(np.int64)


def _counts_by_item(pred, truth, stack):
    """tp, fp, fn, tn of boolean masks (numpy arrays or torch tensors), summed over all axes but the first."""
    pixel_axes = tuple(range(1, pred.ndim))
    return stack(
        [
            (pred & truth).sum(pixel_axes),
            (pred & ~truth).sum(pixel_axes),
            (~pred & truth).sum(pixel_axes),
            (~pred & ~truth).sum(pixel_axes),
        ],
        -1,
    )


def _unpack(counts: CountsLike) -> tuple[np.ndarray, ...]:
    values = np.asarray(counts, dtype=np.float64)
    if values.shape[-1:] != (4,):
        raise ValueError(f"counts need a last axis of 4 (tp, fp, fn, tn), got shape {values.shape}")
    return tuple(values[..., column] for column in range(4))


def _ratio(numerator: np.ndarray, denominator: np.ndarray, fallback: float | np.ndarray) -> float | np.ndarray:
    """``numerator / denominator``, and ``fallback`` where the denominator is zero."""
    defined = denominator > 0
    result = np.where(defined, numerator / np.where(defined, denominator, 1.0), fallback)
    return float(result) if result.ndim == 0 else result


def _one(value: float | np.ndarray) -> float:
    """A metric of one set of counts (a last axis of 4 only): a float."""
    assert isinstance(value, float)
    return value


def _each(value: float | np.ndarray) -> np.ndarray:
    """A metric of several sets of counts (more axes than the last): an array of one value each."""
    assert isinstance(value, np.ndarray)
    return value


def dice(counts: CountsLike, empty: float = 1.0) -> float | np.ndarray:
    tp, fp, fn, _ = _unpack(counts)
    return _ratio(2 * tp, 2 * tp + fp + fn, empty)


def iou(counts: CountsLike, empty: float = 1.0) -> float | np.ndarray:
    tp, fp, fn, _ = _unpack(counts)
    return _ratio(tp, tp + fp + fn, empty)


def precision(counts: CountsLike, empty: float = 1.0) -> float | np.ndarray:
    tp, fp, fn, _ = _unpack(counts)
    return _ratio(tp, tp + fp, np.where(fn == 0, empty, 0.0))


def sensitivity(counts: CountsLike, empty: float = 1.0) -> float | np.ndarray:
    tp, _, fn, _ = _unpack(counts)
    return _ratio(tp, tp + fn, empty)


def specificity(counts: CountsLike, empty: float = 1.0) -> float | np.ndarray:
    _, fp, _, tn = _unpack(counts)
    return _ratio(tn, tn + fp, empty)


def accuracy(counts: CountsLike, empty: float = 1.0) -> float | np.ndarray:
    tp, fp, fn, tn = _unpack(counts)
    return _ratio(tp + tn, tp + fp + fn + tn, empty)


def _means(name: str, counts: np.ndarray) -> dict[str, float]:
    """``dice_<name>_mean`` and ``iou_<name>_mean`` over rows of counts; nothing when there are none."""
    if len(counts) == 0:
        return {}
    return {
        f"dice_{name}_mean": float(_each(dice(counts)).mean()),
        f"iou_{name}_mean": float(_each(iou(counts)).mean()),
    }


Regions = dict[str, tuple[int, ...]]


def region_masks(labels: MaskLike, regions: Regions) -> dict[str, np.ndarray]:
    """A boolean mask per region: pixels whose class label is in the region's set."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    return {name: np.isin(labels, members) for name, members in regions.items()}


def region_confusion(pred: MaskLike, truth: MaskLike, regions: Regions) -> np.ndarray:
    """(N, R, 4) counts per item and region, regions in the mapping's order."""
    pred_regions, truth_regions = region_masks(pred, regions), region_masks(truth, regions)
    return np.stack([confusion_per_item(pred_regions[r], truth_regions[r]) for r in regions], axis=1)


def region_confusion_tensor(pred: torch.Tensor, truth: torch.Tensor, regions: Regions) -> torch.Tensor:
    """:func:`region_confusion` computed where the label tensors are: (N, R, 4) int64 on their device.

    The Trainer counts each step's predictions with it and copies the counts to the host once an
    epoch, not once a step. Region membership is tested by comparisons, so no lookup table has
    to be copied to the device.
    """
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from truth shape {tuple(truth.shape)}")

    def in_region(labels: torch.Tensor, members: tuple[int, ...]) -> torch.Tensor:
        inside = torch.zeros_like(labels, dtype=torch.bool)
        for member in members:
            inside |= labels == member
        return inside

    per_region = [
        _counts_by_item(in_region(pred, members), in_region(truth, members), torch.stack)
        for members in regions.values()
    ]
    return torch.stack(per_region, dim=1).to(torch.int64)


def confusion_matrix(pred: MaskLike, truth: MaskLike, classes: int) -> np.ndarray:
    """(C, C) pixel counts, rows = true class, columns = predicted class."""
    pred, truth = (np.asarray(m.detach().cpu() if isinstance(m, torch.Tensor) else m) for m in (pred, truth))
    index = truth.astype(np.int64).ravel() * classes + pred.astype(np.int64).ravel()
    return np.bincount(index, minlength=classes * classes).reshape(classes, classes)


def seed_style(matrix: np.ndarray) -> dict[str, float]:
    """Pixel metrics as the BraTS seeds compute them with Keras, from a (C, C) confusion matrix.

    ``mean_iou_classes`` is Keras' MeanIoU: the IoU of each class, background included, averaged
    over the classes present in truth or prediction.
    Precision, sensitivity and specificity are summed over the one-hot channels of every class,
    background included, which the background dominates: they read high for almost any model.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    true_positive = np.diag(matrix)
    per_class_iou = _ratio(true_positive, matrix.sum(0) + matrix.sum(1) - true_positive, np.nan)
    total, correct, classes = matrix.sum(), true_positive.sum(), len(matrix)
    wrong = total - correct
    pooled = np.array([correct, wrong, wrong, total * (classes - 1) - wrong])
    return {
        "mean_iou_classes": float(np.nanmean(per_class_iou)),
        "onehot_precision": _one(precision(pooled)),
        "onehot_sensitivity": _one(sensitivity(pooled)),
        "onehot_specificity": _one(specificity(pooled)),
    }


# What :func:`summarise` does, in words for a metrics file's protocol; kept next to the code it describes.
EMPTY_MASK_RULE = (
    "Dice and IoU of a slice or patient whose truth and prediction are both empty are 1 (a correct "
    "'no tumour', as MONAI's DiceMetric(ignore_empty=False)); empty truth with a non-empty prediction "
    "scores 0. Pooled precision with no predicted positives is 1 when the truth is empty too, else 0; "
    "sensitivity with empty truth is 1; specificity with no true negatives is 1. A mean over no cases "
    "is left out of the summary."
)
AGGREGATION = {
    "slice_mean": "Dice/IoU of each slice, averaged over all slices (every slice weighs the same)",
    "positive_slice_mean": "Dice/IoU of each slice whose truth has tumour pixels, averaged over those slices",
    "patient_mean": "counts summed over each patient's slices (Dice/IoU of the volume rebuilt from its "
    "slices), averaged over patients",
    "pooled": "counts summed over all pixels of all slices (dice_pooled, iou_pooled, pixel_accuracy, "
    "precision, sensitivity, specificity)",
}


def summarise(per_slice: pd.DataFrame) -> dict[str, float | int]:
    """Test-set summary from per-slice counts (columns ``patient, tp, fp, fn, tn``).

    Three averages answer different questions: over slices (every slice weighs the same, an
    empty slice predicted empty scores 1), over positive slices only (quality where tumour is),
    and over patients (counts summed per patient, i.e. Dice of the rebuilt 3-D volume). Pooled
    values sum counts over all pixels of the set. Keys of an average over nothing are left out.
    """
    missing = [column for column in ["patient", *COUNT_COLUMNS] if column not in per_slice]
    if missing:
        raise ValueError(f"per-slice counts lack column(s) {', '.join(missing)}")
    counts = per_slice[COUNT_COLUMNS].to_numpy(dtype=np.int64)
    positive = (per_slice["tp"] + per_slice["fn"] > 0).to_numpy()
    per_patient = per_slice.groupby("patient")[COUNT_COLUMNS].sum().to_numpy(dtype=np.int64)
    summary: dict[str, float | int] = {
        **_means("slice", counts),
        **_means("positive_slice", counts[positive]),
        **_means("patient", per_patient),
    }
    if len(counts):
        pooled = counts.sum(axis=0)
        summary |= {
            "dice_pooled": _one(dice(pooled)),
            "iou_pooled": _one(iou(pooled)),
            "pixel_accuracy": _one(accuracy(pooled)),
            "precision": _one(precision(pooled)),
            "sensitivity": _one(sensitivity(pooled)),
            "specificity": _one(specificity(pooled)),
        }
    return summary | {
        "slices": len(per_slice),
        "positive_slices": int(positive.sum()),
        "patients": len(per_patient),
    }


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face-neighbour outside it (the array border counts as outside)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure)


def hausdorff95(pred: MaskLike, truth: MaskLike, spacing: float | Sequence[float] = 1.0) -> float:
    """95th percentile of the symmetric surface distances between two masks, in ``spacing`` units.

    The distances from each surface voxel of one mask to the nearest surface voxel of the other,
    both directions pooled (as MedPy's ``hd95``). Both masks empty gives 0.0; exactly one empty
    gives ``inf`` (no surface to measure to): means must not use it raw, but
    :func:`penalised_hausdorff95`, which replaces it with a stated penalty.
    """
    pred, truth = _as_bool_pair(pred, truth)
    if not pred.any() and not truth.any():
        return 0.0
    if not pred.any() or not truth.any():
        return float("inf")
    pred_surface, truth_surface = _surface(pred), _surface(truth)
    to_truth = ndimage.distance_transform_edt(~truth_surface, sampling=spacing)[pred_surface]
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)[truth_surface]
    return float(np.percentile(np.concatenate([to_truth, to_pred]), 95))


# How a case's HD95 came about; the last two have no surface to measure to and score the penalty.
HD95_DEFINED = "defined"
HD95_BOTH_EMPTY = "both_empty"
HD95_MISSED_TUMOUR = "missed_tumour"
HD95_FALSE_POSITIVE = "false_positive"
HD95_UNDEFINED = (HD95_MISSED_TUMOUR, HD95_FALSE_POSITIVE)
HD95_COUNT_KEYS = ("hd95_defined_patients", "hd95_missed_tumour", "hd95_false_positive")
# Integer counts of a summary: never averaged over regions.
COUNT_KEYS = ("slices", "positive_slices", "patients", *HD95_COUNT_KEYS)

HD95_RULE = (
    "HD95 per patient, in pixels of the evaluation grid. Truth and prediction both empty scores 0 "
    "(BraTS convention). A missed tumour (truth, empty prediction) or a false positive on an empty "
    "case (prediction, empty truth) has no surface to measure to and scores a fixed worst-case "
    "distance (BraTS convention): the diagonal of the patient's evaluation grid, "
    "sqrt(sum((n_i * spacing_i)^2)) over its axes. hd95_patient_mean averages over all patients, "
    "penalties included; hd95_defined_mean over the hd95_defined_patients only; hd95_missed_tumour "
    "and hd95_false_positive count the penalised patients."
)


def hd95_penalty(shape: Sequence[int], spacing: float | Sequence[float] = 1.0) -> float:
    """The worst-case distance an undefined HD95 scores: the diagonal of a grid of ``shape`` voxels.

    A fixed, stated value instead of ``inf`` keeps a missed case in the mean and makes it cost
    more than any defined distance on that grid.
    """
    spacings = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (len(shape),))
    extents = np.asarray(shape, dtype=np.float64) * spacings
    return float(np.sqrt(np.sum(extents**2)))


def hd95_status(pred: MaskLike, truth: MaskLike) -> str:
    """Which of the four HD95 cases a prediction falls in, from which masks are empty."""
    pred, truth = _as_bool_pair(pred, truth)
    has_pred, has_truth = bool(pred.any()), bool(truth.any())
    if has_pred and has_truth:
        return HD95_DEFINED
    if has_truth:
        return HD95_MISSED_TUMOUR
    return HD95_FALSE_POSITIVE if has_pred else HD95_BOTH_EMPTY


def penalised_hausdorff95(pred: MaskLike, truth: MaskLike, spacing: float | Sequence[float] = 1.0) -> tuple[float, str]:
    """HD95 and its :func:`hd95_status`, with :func:`hd95_penalty` of the grid where it is undefined.

    Always finite, so a mean over cases counts every case; the status says which were penalised.
    """
    pred, truth = _as_bool_pair(pred, truth)
    status = hd95_status(pred, truth)
    if status in HD95_UNDEFINED:
        return hd95_penalty(truth.shape, spacing), status
    return hausdorff95(pred, truth, spacing), status


def summarise_hd95(values: Sequence[float], statuses: Sequence[str]) -> dict[str, float | int]:
    """HD95 means and counts over cases scored by :func:`penalised_hausdorff95`.

    ``hd95_patient_mean`` is over every case, penalties included, so missing more tumours can
    only make it worse; ``hd95_defined_mean`` (left out when no case has one) is over the cases
    with a defined HD95, for comparison with results that drop the others.
    """
    scores, kinds = np.asarray(values, dtype=np.float64), np.asarray(statuses, dtype=object)
    if scores.shape != kinds.shape:
        raise ValueError(f"{scores.shape[0]} HD95 values but {kinds.shape[0]} statuses")
    if not np.isfinite(scores).all():
        raise ValueError("HD95 values must be finite: score undefined cases with penalised_hausdorff95")
    defined = (kinds == HD95_DEFINED) | (kinds == HD95_BOTH_EMPTY)
    summary: dict[str, float | int] = {}
    if len(scores):
        summary["hd95_patient_mean"] = float(scores.mean())
    if defined.any():
        summary["hd95_defined_mean"] = float(scores[defined].mean())
    counts = (defined.sum(), (kinds == HD95_MISSED_TUMOUR).sum(), (kinds == HD95_FALSE_POSITIVE).sum())
    return summary | {key: int(count) for key, count in zip(HD95_COUNT_KEYS, counts, strict=True)}


# Confidence intervals: patients are the unit a test set samples, so they are what is resampled.
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
BOOTSTRAP_LEVEL = 0.95
BOOTSTRAP_RULE = (
    f"{BOOTSTRAP_LEVEL:.0%} percentile bootstrap over patients: {BOOTSTRAP_RESAMPLES} resamples of the "
    f"patients with replacement (numpy default_rng seed {BOOTSTRAP_SEED}), each patient's slices kept "
    "together; every region and metric uses the same resamples; 'low'/'high' under 'ci95'"
)
BOOTSTRAP_METRICS = (
    "dice_patient_mean",
    "iou_patient_mean",
    "dice_pooled",
    "dice_positive_slice_mean",
    "hd95_patient_mean",
)


def patient_resamples(patients: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """(resamples, patients) indices: each row draws ``patients`` patients with replacement."""
    return np.random.default_rng(seed).integers(0, patients, size=(resamples, patients))


def bootstrap_statistics(
    per_slice: pd.DataFrame, draws: np.ndarray, hd95: pd.Series | None = None
) -> dict[str, np.ndarray]:
    """Each :data:`BOOTSTRAP_METRICS` value on every resample of patients (one region's slices).

    ``draws`` indexes patients in sorted order (:func:`patient_resamples`); ``hd95`` is the
    per-patient HD95 indexed by patient. A resample with no tumour slice gives NaN for the
    tumour-slice mean.
    """
    grouped = per_slice.groupby("patient")
    patients = grouped.size().index
    counts = grouped[COUNT_COLUMNS].sum().to_numpy(dtype=np.int64)
    positive = per_slice["tp"] + per_slice["fn"] > 0
    slice_dice = pd.Series(dice(per_slice[COUNT_COLUMNS].to_numpy(dtype=np.int64)), index=per_slice.index)
    positive_sum = slice_dice[positive].groupby(per_slice["patient"]).sum().reindex(patients, fill_value=0.0)
    positive_n = positive.groupby(per_slice["patient"]).sum().reindex(patients, fill_value=0)
    resampled_counts = counts[draws]
    with np.errstate(invalid="ignore", divide="ignore"):
        positive_mean = positive_sum.to_numpy()[draws].sum(axis=1) / positive_n.to_numpy()[draws].sum(axis=1)
    stats = {
        "dice_patient_mean": _each(dice(resampled_counts)).mean(axis=1),
        "iou_patient_mean": _each(iou(resampled_counts)).mean(axis=1),
        "dice_pooled": _each(dice(resampled_counts.sum(axis=1))),
        "dice_positive_slice_mean": positive_mean,
    }
    if hd95 is not None:
        stats["hd95_patient_mean"] = hd95.reindex(patients).to_numpy(dtype=np.float64)[draws].mean(axis=1)
    return stats


def intervals(stats: dict[str, np.ndarray], level: float = BOOTSTRAP_LEVEL) -> dict[str, dict[str, float]]:
    """Percentile intervals ``{metric: {"low", "high"}}``; a metric undefined on every resample is left out."""
    tail = (1 - level) / 2 * 100
    result = {}
    for name, values in stats.items():
        values = np.asarray(values, dtype=np.float64)
        values = values[np.isfinite(values)]
        if len(values):
            low, high = np.percentile(values, [tail, 100 - tail])
            result[name] = {"low": float(low), "high": float(high)}
    return result


def mean_interval(
    values: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> dict[str, float]:
    """The bootstrap interval of a mean over patients, from one value per patient."""
    array = np.asarray(values, dtype=np.float64)
    if not len(array):
        raise ValueError("no values to bootstrap")
    draws = patient_resamples(len(array), resamples, seed)
    return intervals({"mean": array[draws].mean(axis=1)})["mean"]
