"""Test-set evaluation: per-slice and per-patient results, summary metrics, example overlays."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from glioseg import metrics
from glioseg.data.cache import SliceArrays
from glioseg.inference import predict_probabilities, select_device
from glioseg.io import write_csv
from glioseg.model import LoadedModel
from glioseg.transforms import BatchAugment, pipelines_from_dict
from glioseg.viz import overlay, overlay_grid, save_png

COUNT_COLUMNS = ["tp", "fp", "fn", "tn"]


@dataclass
class Evaluation:
    per_slice: pd.DataFrame
    per_patient: pd.DataFrame
    summary: dict[str, float]
    predictions: np.ndarray


def predict_masks(loaded: LoadedModel, arrays: SliceArrays, device: str = "auto") -> np.ndarray:
    """Binary predictions (N,H,W) for cached slices, with the model's own eval pipeline."""
    normaliser = BatchAugment.from_pipeline(pipelines_from_dict(loaded.pipelines)["eval"])
    target = select_device(device)
    model = loaded.model.to(target)
    return predict_probabilities(model, arrays.images, normaliser, target) > loaded.threshold


def per_slice_table(arrays: SliceArrays, predictions: np.ndarray) -> pd.DataFrame:
    counts = metrics.confusion_per_item(predictions, arrays.masks > 0)
    table = pd.DataFrame(counts, columns=COUNT_COLUMNS)
    table.insert(0, "slice", arrays.slice)
    table.insert(0, "patient", arrays.patient)
    table["truth_pixels"] = table["tp"] + table["fn"]
    table["predicted_pixels"] = table["tp"] + table["fp"]
    table["dice"] = metrics.dice(counts)
    table["iou"] = metrics.iou(counts)
    return table


def patient_volumes(arrays: SliceArrays, predictions: np.ndarray):
    """(patient, truth volume, predicted volume) with slices stacked in slice order."""
    for patient in np.unique(arrays.patient):
        index = np.flatnonzero(arrays.patient == patient)
        index = index[np.argsort(arrays.slice[index])]
        yield patient, arrays.masks[index] > 0, predictions[index]


def per_patient_table(per_slice: pd.DataFrame, arrays: SliceArrays, predictions: np.ndarray) -> pd.DataFrame:
    table = per_slice.groupby("patient", as_index=False)[COUNT_COLUMNS].sum()
    counts = table[COUNT_COLUMNS].to_numpy()
    table["slices"] = per_slice.groupby("patient")["slice"].count().to_numpy()
    table["dice"] = metrics.dice(counts)
    table["iou"] = metrics.iou(counts)
    hd95 = {patient: metrics.hausdorff95(pred, truth) for patient, truth, pred in patient_volumes(arrays, predictions)}
    table["hd95"] = table["patient"].map(hd95)
    return table


def summarise(per_slice: pd.DataFrame, per_patient: pd.DataFrame) -> dict[str, float]:
    summary = metrics.summarise(per_slice)
    finite = per_patient["hd95"].replace([np.inf, -np.inf], np.nan).dropna()
    if len(finite):
        summary["hd95_patient_mean"] = float(finite.mean())
    return summary


def evaluate(loaded: LoadedModel, arrays: SliceArrays, device: str = "auto") -> Evaluation:
    predictions = predict_masks(loaded, arrays, device)
    per_slice = per_slice_table(arrays, predictions)
    per_patient = per_patient_table(per_slice, arrays, predictions)
    return Evaluation(per_slice, per_patient, summarise(per_slice, per_patient), predictions)


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


def slice_panel(arrays: SliceArrays, predictions: np.ndarray, row: int) -> np.ndarray:
    return overlay(arrays.images[row], arrays.masks[row], predictions[row])


def example_overlays(result: Evaluation, arrays: SliceArrays) -> dict[str, np.ndarray]:
    """Overlay images keyed by name: best/median/worst slice, and the same for patients."""
    panels = {}
    for rank, row in ranked_examples(result.per_slice).items():
        info = result.per_slice.loc[row]
        panels[f"slice_{rank}"] = (
            slice_panel(arrays, result.predictions, row),
            f"{rank} slice: {info.patient} #{info.slice}, Dice {info.dice:.3f}",
        )
    for rank, patient in ranked_patients(result.per_patient).items():
        rows = np.flatnonzero(arrays.patient == patient)
        largest = rows[np.argmax(arrays.masks[rows].reshape(len(rows), -1).sum(axis=1))]
        dice = float(result.per_patient.set_index("patient").loc[patient, "dice"])
        panels[f"patient_{rank}"] = (
            slice_panel(arrays, result.predictions, largest),
            f"{rank} patient: {patient} (largest tumour slice #{arrays.slice[largest]}), volume Dice {dice:.3f}",
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
