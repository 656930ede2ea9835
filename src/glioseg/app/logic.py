"""What the viewer computes, free of Streamlit: cases, predictions, areas, Dice, overlays, downloads.

Masks come from :func:`glioseg.predict.predict_inputs` (the checkpoint's own preprocessing) and
are resized back to the input like ``glioseg predict`` does, so the viewer shows, and lets you
download, exactly the masks predict writes.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from dataclasses import astuple, dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import tifffile

from glioseg.data.lgg import read_mask
from glioseg.errors import DataError
from glioseg.metrics import confusion, dice
from glioseg.model import LoadedModel, load_model
from glioseg.predict import (
    SliceInput,
    find_inputs,
    find_inputs_in_case,
    is_image_tif,
    predict_inputs,
    resolve_model,
    to_input_size,
)
from glioseg.viz import PREDICTION_COLOUR, TRUTH_COLOUR, display_image

OVERLAP_COLOUR = (255, 255, 0)
DISPLAY_SIZE = 512


@dataclass(frozen=True)
class Case:
    """A case's slices in order, with the truth mask file of each where one exists."""

    name: str
    items: tuple[SliceInput, ...]
    truth_paths: tuple[Path | None, ...]


@dataclass(frozen=True)
class CaseResult:
    """A predicted case: per slice its image, predicted mask {0,1} at input size and truth (or None)."""

    name: str
    slices: tuple[str, ...]
    images: tuple[np.ndarray, ...]
    predictions: tuple[np.ndarray, ...]
    truths: tuple[np.ndarray | None, ...]

    @property
    def has_truth(self) -> bool:
        return any(truth is not None for truth in self.truths)


def list_cases(root: Path) -> list[str]:
    """Names of the case folders under ``root``; none when it is missing (uploads still work)."""
    if not root.is_dir():
        return []
    return [p.name for p in sorted(root.iterdir())
            if p.is_dir() and not p.name.startswith(".") and find_inputs_in_case(p)]


def truth_path(item: SliceInput) -> Path | None:
    path = item.path.with_name(f"{item.path.stem}_mask{item.path.suffix}")
    return path if path.is_file() else None


def load_case(folder: Path) -> Case:
    """A case from its folder: the one place that knows a case's format (kaggle_3m TIF slices)."""
    items = tuple(find_inputs(folder))
    return Case(folder.name, items, tuple(truth_path(item) for item in items))


def case_fingerprint(case: Case) -> str:
    """Changes whenever a file of the case changes, so cached predictions are never stale."""
    digest = hashlib.sha256()
    for path in [item.path for item in case.items] + [p for p in case.truth_paths if p is not None]:
        stat = path.stat()
        digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def model_version(spec: str) -> str:
    """The model file's modification time (empty for MLflow URIs), to reload a retrained model."""
    path = Path(spec)
    return str(path.stat().st_mtime_ns) if path.is_file() else ""


def load(spec: str) -> LoadedModel:
    """A model from a file, ``runs:/<run id>`` or ``models:/<name>/<version>``, as predict takes it."""
    return load_model(resolve_model(spec))


def read_truth(path: Path | None, shape: tuple[int, int]) -> np.ndarray | None:
    if path is None:
        return None
    truth = read_mask(path)
    if truth.shape != shape:
        raise DataError(f"{path}: mask is {truth.shape[0]}x{truth.shape[1]} but its image is {shape[0]}x{shape[1]}")
    return truth


def predict_case(loaded: LoadedModel, case: Case, device: str = "auto") -> CaseResult:
    images, predictions = [], []
    for _, image, mask in predict_inputs(loaded, list(case.items), device):
        images.append(image)
        predictions.append(to_input_size(mask, image.shape[:2]))
    truths = [read_truth(path, image.shape[:2]) for path, image in zip(case.truth_paths, images)]
    return CaseResult(case.name, tuple(item.name for item in case.items), tuple(images), tuple(predictions),
                      tuple(truths))


def slice_dice(prediction: np.ndarray, truth: np.ndarray | None) -> float | None:
    """Dice with the project's empty-mask rule (both empty: 1); None without truth."""
    return None if truth is None else float(dice(confusion(prediction, truth)))


def case_dice(result: CaseResult) -> float | None:
    """Dice pooled over the slices that have truth (the case as one volume); None without truth."""
    counts = [astuple(confusion(p, t)) for p, t in zip(result.predictions, result.truths) if t is not None]
    return float(dice(np.sum(counts, axis=0))) if counts else None


def slice_table(result: CaseResult) -> pd.DataFrame:
    """Per slice: predicted and true tumour area (pixels) and Dice."""
    return pd.DataFrame({
        "slice": result.slices,
        "predicted_pixels": [np.count_nonzero(p) for p in result.predictions],
        "truth_pixels": pd.array([None if t is None else np.count_nonzero(t) for t in result.truths], dtype="Int64"),
        "dice": [slice_dice(p, t) for p, t in zip(result.predictions, result.truths)],
    })


def as_text(value) -> str:
    """A count as an integer, a Dice with three decimals, a missing value as a dash."""
    if value is None or pd.isna(value):
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(int(value))


def area_summary(result: CaseResult, table: pd.DataFrame, index: int) -> pd.DataFrame:
    """The numbers shown beside slice ``index``: its tumour area, truth area and Dice, and the case's."""
    row = table.iloc[index]
    case_truth = table["truth_pixels"].sum() if result.has_truth else None
    summary = pd.DataFrame(
        [[row.predicted_pixels, row.truth_pixels, row.dice],
         [table["predicted_pixels"].sum(), case_truth, case_dice(result)]],
        index=[f"slice {index + 1}", "case"], columns=["tumour area (px)", "truth area (px)", "Dice"],
        dtype=object)
    if not result.has_truth:
        summary = summary[["tumour area (px)"]]
    return summary.map(as_text)


def compose_overlay(image: np.ndarray, prediction: np.ndarray, truth: np.ndarray | None, opacity: float) -> np.ndarray:
    """RGB uint8: the scan in grey with truth (green), prediction (red) and both (yellow) blended at ``opacity``."""
    out = display_image(image).astype(np.float32)
    predicted = prediction > 0
    true = np.zeros_like(predicted) if truth is None else truth > 0
    for region, colour in ((true & ~predicted, TRUTH_COLOUR), (predicted & ~true, PREDICTION_COLOUR),
                           (predicted & true, OVERLAP_COLOUR)):
        out[region] = (1 - opacity) * out[region] + opacity * np.asarray(colour, np.float32)
    return np.round(out).astype(np.uint8)


def enlarge(image: np.ndarray, size: int = DISPLAY_SIZE) -> np.ndarray:
    """Nearest-neighbour upscale by a whole factor towards ``size`` px, so small slices show crisp pixels."""
    factor = max(1, size // max(image.shape[:2]))
    return cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)


def tif_bytes(mask: np.ndarray) -> bytes:
    """A {0,1} mask as the TIF predict writes: 0/255, single channel."""
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, mask.astype(np.uint8) * 255, photometric="minisblack")
    return buffer.getvalue()


def masks_zip(result: CaseResult) -> bytes:
    """A zip of ``<case>/<slice>_mask.tif`` for every slice, laid out as predict's output folder."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, mask in zip(result.slices, result.predictions):
            archive.writestr(f"{result.name}/{name}_mask.tif", tif_bytes(mask))
    return buffer.getvalue()


def upload_case_name(names: list[str]) -> str:
    """``<patient>`` from Kaggle slice names ``<patient>_<n>.tif``; ``upload`` for other names."""
    stems = sorted(Path(name).stem for name in names if is_image_tif(Path(name)))
    head, _, tail = stems[0].rpartition("_") if stems else ("", "", "")
    return head if head and tail.isdigit() else "upload"


def save_uploads(files: list[tuple[str, bytes]], root: Path) -> Path:
    """Write uploaded TIFs into a case folder under ``root`` and return it.

    The folder is named after the content, so uploading the same files again finds the same
    folder (and the cached prediction). Only the base name of each upload is used.
    """
    tifs = [(os.path.basename(name), data) for name, data in files if Path(name).suffix.lower() in (".tif", ".tiff")]
    if not any(is_image_tif(Path(name)) for name, _ in tifs):
        raise DataError("upload: no .tif image slices (only masks or other files)")
    digest = hashlib.sha256()
    for name, data in sorted(tifs):
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    folder = root / digest.hexdigest()[:16] / upload_case_name([name for name, _ in tifs])
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in tifs:
        (folder / name).write_bytes(data)
    return folder
