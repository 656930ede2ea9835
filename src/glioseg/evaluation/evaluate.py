"""Test-set evaluation: per-slice and per-patient results, summary metrics, example overlays.

Every table has a ``region`` column: LGG has the one region ``tumour``; BraTS models are scored
on each of their regions (whole tumour, tumour core, enhancing tumour by default). With one
region the summary holds its metrics; with several it holds their means, the ``regions``
themselves and the seeds' one-hot pixel metrics. Every summary carries its ``protocol``: how
each mean aggregates, the empty-mask and HD95 rules, and the number of cases behind the means.
Overlays and best/worst ranks use the first region.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from glioseg import metrics
from glioseg.config.sections import InferenceParams
from glioseg.data.cache import SliceArrays, volume_indices
from glioseg.data.context import centre_slice
from glioseg.figures import overlay, overlay_grid, save_png
from glioseg.inference.predictor import Predictor
from glioseg.io import write_csv
from glioseg.model.checkpoint import LoadedModel, ModelSet

HD95_GRID = (
    "per patient on the volume of its slices stacked in slice order (Z x H x W) at the model's "
    "input size, one pixel per slice step and per in-plane pixel"
)
REGION_MEAN = (
    "each region is scored as a binary mask; top-level values are the unweighted mean over "
    "regions, per-region values and HD95 case counts are under 'regions'"
)


@dataclass
class Evaluation:
    per_slice: pd.DataFrame
    per_patient: pd.DataFrame
    summary: dict
    predictions: np.ndarray
    classes: int = 1
    context: int = 0

    @property
    def first_region(self) -> str:
        return str(self.per_slice["region"].iloc[0])

    def region_rows(self, table: pd.DataFrame) -> pd.DataFrame:
        """The rows of the first region, re-indexed 0..N-1 in array order."""
        return table[table["region"] == self.first_region].reset_index(drop=True)


def predict_masks(
    loaded: LoadedModel | ModelSet, arrays: SliceArrays, device: str = "auto", inference: InferenceParams | None = None
) -> np.ndarray:
    """Class labels (N,H,W) for cached slices, post-processed per case: the :class:`Predictor` path
    that predict and the viewer take, with ``inference`` (None: the model file's settings)."""
    return Predictor(loaded, device, inference).predict_arrays(arrays)


def per_slice_table(arrays: SliceArrays, predictions: np.ndarray, regions: metrics.Regions) -> pd.DataFrame:
    """Counts, Dice and IoU per slice and region (region-major, slices in array order)."""
    counts = metrics.region_confusion(predictions, arrays.masks, regions)
    tables = []
    for r, region in enumerate(regions):
        table = pd.DataFrame(counts[:, r], columns=metrics.COUNT_COLUMNS)
        table.insert(0, "region", region)
        table.insert(0, "slice", arrays.slice)
        table.insert(0, "patient", arrays.patient)
        tables.append(table)
    table = pd.concat(tables, ignore_index=True)
    region_counts = table[metrics.COUNT_COLUMNS].to_numpy()
    table["truth_pixels"] = table["tp"] + table["fn"]
    table["predicted_pixels"] = table["tp"] + table["fp"]
    table["dice"] = metrics.dice(region_counts)
    table["iou"] = metrics.iou(region_counts)
    return table


def patient_volumes(arrays: SliceArrays, predictions: np.ndarray, members: tuple[int, ...]):
    """(patient, truth volume, predicted volume) of one region, slices stacked in slice order."""
    for patient, index in volume_indices(arrays.patient, arrays.slice):
        yield patient, np.isin(arrays.masks[index], members), np.isin(predictions[index], members)


def per_patient_table(
    per_slice: pd.DataFrame, arrays: SliceArrays, predictions: np.ndarray, regions: metrics.Regions
) -> pd.DataFrame:
    """Counts summed per patient and region (Dice of the rebuilt volume) with the volume's HD95.

    ``hd95`` is finite, the grid diagonal where it is undefined; ``hd95_status`` says which case
    each patient is (:func:`metrics.hd95_status`), so means can count the penalised ones.
    """
    grouped = per_slice.groupby(["region", "patient"], sort=False)
    table = grouped[metrics.COUNT_COLUMNS].sum().reset_index()
    counts = table[metrics.COUNT_COLUMNS].to_numpy()
    table["slices"] = grouped["slice"].count().to_numpy()
    table["dice"] = metrics.dice(counts)
    table["iou"] = metrics.iou(counts)
    hd95 = {
        (region, patient): metrics.penalised_hausdorff95(pred, truth)
        for region, members in regions.items()
        for patient, truth, pred in patient_volumes(arrays, predictions, members)
    }
    scored = [hd95[key] for key in zip(table["region"], table["patient"])]
    table["hd95"] = [value for value, _ in scored]
    table["hd95_status"] = [status for _, status in scored]
    return table


def region_summary(per_slice: pd.DataFrame, per_patient: pd.DataFrame) -> dict[str, float | int]:
    """One region's metrics: :func:`metrics.summarise` of its slices and the HD95 of its patients."""
    return metrics.summarise(per_slice) | metrics.summarise_hd95(per_patient["hd95"], per_patient["hd95_status"])


def protocol(by_region: dict[str, dict]) -> dict:
    """How the summary's numbers were made, and over how many cases (JSON-serialisable).

    Positive slices differ by region, so with several regions they are given per region.
    """
    first = next(iter(by_region.values()))
    positive = {region: s["positive_slices"] for region, s in by_region.items()}
    aggregation = metrics.AGGREGATION | {"hd95_patient_mean": HD95_GRID}
    if len(by_region) > 1:
        aggregation |= {"regions": REGION_MEAN}
    return {
        "aggregation": aggregation,
        "empty_mask_rule": metrics.EMPTY_MASK_RULE,
        "hd95": metrics.HD95_RULE,
        "confidence_interval": metrics.BOOTSTRAP_RULE,
        "cases": {
            "slices": first["slices"],
            "positive_slices": positive if len(by_region) > 1 else first["positive_slices"],
            "patients": first["patients"],
        },
    }


def summarise(per_slice: pd.DataFrame, per_patient: pd.DataFrame, matrix: np.ndarray | None = None) -> dict:
    """One region: its metrics. Several: their means, ``regions`` and the seeds' pixel metrics.

    Either way with its ``protocol`` and the bootstrap intervals (``ci95``) of the headline metrics;
    every region is resampled with the same patient draws, so the intervals of the means over
    regions resample whole patients too. Counts (:data:`glioseg.metrics.COUNT_KEYS`) are not averaged over regions:
    the top level keeps the slices and patients every region shares, each region its own counts.
    """
    draws = metrics.patient_resamples(per_slice["patient"].nunique())
    by_region, stats = {}, {}
    for region, rows in per_slice.groupby("region", sort=False):
        patients = per_patient[per_patient["region"] == region]
        stats[region] = metrics.bootstrap_statistics(rows, draws, patients.set_index("patient")["hd95"])
        by_region[region] = region_summary(rows, patients) | {"ci95": metrics.intervals(stats[region])}
    stated = {"protocol": protocol(by_region)}
    first = next(iter(by_region.values()))
    if len(by_region) == 1:
        return first | stated
    keys = [
        k
        for k in first
        if k not in metrics.COUNT_KEYS and not isinstance(first[k], dict) and all(k in s for s in by_region.values())
    ]
    summary: dict = {k: float(np.mean([s[k] for s in by_region.values()])) for k in keys}
    summary |= {"slices": first["slices"], "patients": first["patients"]}
    if matrix is not None:
        summary |= metrics.seed_style(matrix)
    region_mean = {name: np.mean([s[name] for s in stats.values()], axis=0) for name in next(iter(stats.values()))}
    return summary | {"ci95": metrics.intervals(region_mean), "regions": by_region} | stated


def evaluate(
    loaded: LoadedModel | ModelSet, arrays: SliceArrays, device: str = "auto", inference: InferenceParams | None = None
) -> Evaluation:
    """Score cached slices predicted with ``inference`` (None: the model file's settings)."""
    predictions = predict_masks(loaded, arrays, device, inference)
    regions = loaded.regions
    per_slice = per_slice_table(arrays, predictions, regions)
    per_patient = per_patient_table(per_slice, arrays, predictions, regions)
    matrix = metrics.confusion_matrix(predictions, arrays.masks, loaded.classes) if loaded.classes > 1 else None
    return Evaluation(
        per_slice, per_patient, summarise(per_slice, per_patient, matrix), predictions, loaded.classes, loaded.context
    )


def ranked_examples(per_slice: pd.DataFrame) -> dict[str, int]:
    """Row positions of the best, median and worst slices by Dice among slices with tumour."""
    positive = per_slice[per_slice["truth_pixels"] > 0].sort_values(["dice", "patient", "slice"], kind="stable")
    if positive.empty:
        return {}
    return {
        "worst": int(positive.index[0]),
        "median": int(positive.index[len(positive) // 2]),
        "best": int(positive.index[-1]),
    }


def ranked_patients(per_patient: pd.DataFrame) -> dict[str, str]:
    ordered = per_patient.sort_values(["dice", "patient"], kind="stable")["patient"].tolist()
    if not ordered:
        return {}
    return {"worst": ordered[0], "median": ordered[len(ordered) // 2], "best": ordered[-1]}


def slice_panel(arrays: SliceArrays, result: Evaluation, row: int) -> np.ndarray:
    image = centre_slice(arrays.images[row], result.context)
    return overlay(image, arrays.masks[row], result.predictions[row], result.classes)


def example_overlays(result: Evaluation, arrays: SliceArrays) -> dict[str, tuple[np.ndarray, str]]:
    """Overlay images with their titles, keyed by name: best/median/worst slice, and the same for patients
    (first region)."""
    per_slice, per_patient = result.region_rows(result.per_slice), result.region_rows(result.per_patient)
    region = result.first_region
    panels = {}
    for rank, row in ranked_examples(per_slice).items():
        info = per_slice.loc[row]
        panels[f"slice_{rank}"] = (
            slice_panel(arrays, result, row),
            f"{rank} slice: {info.patient} #{info.slice}, {region} Dice {info.dice:.3f}",
        )
    for rank, patient in ranked_patients(per_patient).items():
        rows = np.flatnonzero(arrays.patient == patient)
        largest = rows[np.argmax((arrays.masks[rows] > 0).reshape(len(rows), -1).sum(axis=1))]
        dice = float(per_patient.set_index("patient").loc[patient, "dice"])
        panels[f"patient_{rank}"] = (
            slice_panel(arrays, result, largest),
            f"{rank} patient: {patient} (largest tumour slice #{arrays.slice[largest]}), "
            f"{region} volume Dice {dice:.3f}",
        )
    return panels


def write_outputs(result: Evaluation, arrays: SliceArrays, out_dir: Path) -> dict[str, np.ndarray]:
    """CSV tables and one PNG per example into ``out_dir``; returns the PNG images for MLflow."""
    write_csv(out_dir / "per_slice.csv", result.per_slice)
    write_csv(out_dir / "per_patient.csv", result.per_patient)
    images = {}
    for name, (panel, title) in example_overlays(result, arrays).items():
        figure = overlay_grid([panel], [title], columns=1)
        save_png(out_dir / f"{name}.png", figure)
        images[f"evaluation/{name}.png"] = panel
    return images
