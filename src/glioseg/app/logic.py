"""What the viewer computes, free of Streamlit: cases, predictions, areas, Dice, overlays, downloads.

A case is a kaggle_3m patient folder of TIF slices or a BraTS case folder of NIfTI volumes
(cut into axial slices as training cut them). Predictions come from :mod:`glioseg.inference.scans`'s
functions, which go through the :class:`~glioseg.inference.predictor.Predictor` evaluate uses too (the
checkpoint's own preprocessing, inference settings and post-processing), at the input's size,
so the viewer shows, and lets you download, exactly what ``glioseg predict`` writes: a zip of TIF masks, or
the predicted label volume aligned with the input. Areas and Dice are given per evaluation
region of the model (LGG: tumour; BraTS: whole tumour, tumour core, enhancing tumour).
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import cv2
import nibabel as nib
import numpy as np
import pandas as pd
import tifffile

from glioseg import paths
from glioseg.config.schema import LGG_REGIONS
from glioseg.data.formats import brats
from glioseg.data.formats.lgg import read_mask
from glioseg.errors import DataError
from glioseg.figures import PREDICTION_COLOUR, TRUTH_COLOUR, class_colour_name, display_image, fill
from glioseg.inference.scans import (
    SliceInput,
    check_input_kind,
    find_inputs,
    find_inputs_in_case,
    is_image_tif,
    is_nifti,
    predict_inputs,
    predict_volume,
    reference_volume,
    to_input_size,
)
from glioseg.metrics import Regions, dice, region_confusion
from glioseg.model.checkpoint import LoadedModel, ModelSet
from glioseg.model.specs import load_models

OVERLAP_COLOUR = (255, 255, 0)
DISPLAY_SIZE = 512




@dataclass(frozen=True)
class Case:
    """A case to show: TIF slices in order with the truth mask file of each where one exists, or,
    with ``nifti``, the folder of a BraTS case, whose volumes are read when it is predicted."""

    name: str
    items: tuple[SliceInput, ...] = ()
    truth_paths: tuple[Path | None, ...] = ()
    nifti: Path | None = None

    @property
    def folder(self) -> Path:
        return self.nifti if self.nifti is not None else self.items[0].path.parent

    def files(self) -> list[Path]:
        if self.nifti is not None:
            return sorted(p for p in self.nifti.iterdir() if is_nifti(p))
        return [item.path for item in self.items] + [p for p in self.truth_paths if p is not None]


@dataclass(frozen=True)
class CaseResult:
    """A predicted case: per slice its image, predicted class labels at input size and truth (or None).

    ``regions`` are the model's evaluation regions (sets of class labels). A NIfTI case also
    carries ``reference``, the volume whose geometry the prediction is written back in, and
    ``file_labels``, the files' label value of each class.
    """

    name: str
    slices: tuple[str, ...]
    images: tuple[np.ndarray, ...]
    predictions: tuple[np.ndarray, ...]
    truths: tuple[np.ndarray | None, ...]
    regions: Regions = field(default_factory=lambda: dict(LGG_REGIONS))
    classes: int = 1
    class_names: tuple[str, ...] = ()
    reference: Path | None = None
    file_labels: tuple[int, ...] | None = None

    @property
    def has_truth(self) -> bool:
        return any(truth is not None for truth in self.truths)

    @functools.cached_property
    def counts(self) -> np.ndarray:
        """(slices, regions, 4) tp/fp/fn/tn of every slice and region (:func:`metrics.region_confusion`).

        A slice without truth is counted against an empty one, so its tp + fp is still its
        predicted area. Computed once per result: the page's table and case Dice both read it.
        """
        return np.stack([region_confusion(p[None], (np.zeros_like(p) if t is None else t)[None], self.regions)[0]
                         for p, t in zip(self.predictions, self.truths)])


def default_data_folder(loaded: LoadedModel | ModelSet) -> Path:
    """Where the pipeline keeps the raw cases of the model's dataset: the viewer's folder without ``--data``."""
    return paths.RAW_BRATS if loaded.dataset == "brats" else paths.RAW_LGG


def list_cases(root: Path) -> list[str]:
    """Names of the case folders (TIF or NIfTI) under ``root``; none when it is missing (uploads still work)."""
    if not root.is_dir():
        return []
    return [p.name for p in sorted(root.iterdir())
            if p.is_dir() and not p.name.startswith(".") and (find_inputs_in_case(p) or brats.is_case_folder(p))]


def truth_path(item: SliceInput) -> Path | None:
    path = item.path.with_name(f"{item.path.stem}_mask{item.path.suffix}")
    return path if path.is_file() else None


def load_case(folder: Path) -> Case:
    """A case from its folder: the one place that tells the formats apart (BraTS NIfTI, kaggle_3m TIF)."""
    if brats.is_case_folder(folder):
        return Case(folder.name, nifti=folder)
    items = tuple(find_inputs(folder))
    return Case(folder.name, items, tuple(truth_path(item) for item in items))


def case_fingerprint(case: Case) -> str:
    """Changes whenever a file of the case changes, so cached predictions are never stale."""
    digest = hashlib.sha256()
    for path in case.files():
        stat = path.stat()
        digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def model_version(spec: str) -> str:
    """The model files' modification times (empty for MLflow URIs), to reload a retrained model."""
    paths = [Path(part.strip()) for part in spec.split(",")]
    return ",".join(str(path.stat().st_mtime_ns) if path.is_file() else "" for path in paths)


def load(spec: str) -> LoadedModel | ModelSet:
    """A model (file, ``runs:/<run id>``, ``models:/<name>/<version>``) or a comma-separated set of
    them or ``folds:<k|site>`` (a fold ensemble), as predict takes it."""
    return load_models(spec)


def read_truth(path: Path | None, shape: tuple[int, int]) -> np.ndarray | None:
    if path is None:
        return None
    truth = read_mask(path)
    if truth.shape != shape:
        raise DataError(f"{path}: mask is {truth.shape[0]}x{truth.shape[1]} but its image is {shape[0]}x{shape[1]}")
    return truth


def case_result(loaded: LoadedModel | ModelSet, case: Case, device: str = "auto") -> CaseResult:
    """The case predicted as ``glioseg predict`` would; a model of the other dataset is a one-line error."""
    check_input_kind(loaded, case.folder, "in use")
    if case.nifti is not None:
        return nifti_case_result(loaded, case, device)
    images, predictions = [], []
    for _, image, mask in predict_inputs(loaded, list(case.items), device):
        images.append(image)
        predictions.append(to_input_size(mask, image.shape[:2]))
    truths = [read_truth(path, image.shape[:2]) for path, image in zip(case.truth_paths, images)]
    return CaseResult(case.name, tuple(item.name for item in case.items), tuple(images), tuple(predictions),
                      tuple(truths), loaded.regions, loaded.classes)


def nifti_case_result(loaded: LoadedModel | ModelSet, case: Case, device: str) -> CaseResult:
    """A BraTS case's axial slices, their predicted classes and, where the case has its seg file, the truth."""
    params = loaded.brats
    assert params is not None and case.nifti is not None  # a BraTS model, and a NIfTI case (case_result)
    has_truth = brats.find_file(case.nifti, params.suffixes[brats.LABELS]) is not None
    volume = brats.read_case(case.nifti, params, with_labels=has_truth)
    labels = predict_volume(loaded, volume.images, device)
    truths = tuple(volume.labels) if volume.labels is not None else (None,) * len(labels)
    return CaseResult(case.name, tuple(f"{case.name}_{z:03d}" for z in range(len(labels))), tuple(volume.images),
                      tuple(labels), truths, loaded.regions, loaded.classes, tuple(params.class_names),
                      reference_volume(loaded, case.nifti),
                      tuple(int(value) for value in brats.source_labels(params.label_map)))


def case_dice(result: CaseResult, region: str | None = None) -> float | None:
    """A region's Dice (default: the first) pooled over the slices that have truth; None without truth."""
    with_truth = [t is not None for t in result.truths]
    if not any(with_truth):
        return None
    index = list(result.regions).index(region) if region is not None else 0
    return float(dice(result.counts[with_truth, index].sum(axis=0)))


def column(result: CaseResult, region: str, quantity: str) -> str:
    """A slice-table column: the plain quantity for a one-region model, ``<region>_<quantity>`` otherwise."""
    return quantity if len(result.regions) == 1 else f"{region}_{quantity}"


def slice_table(result: CaseResult) -> pd.DataFrame:
    """Per slice and region: predicted and true area (pixels) and Dice (the project's empty-mask rule)."""
    counts, with_truth = result.counts, np.array([t is not None for t in result.truths])
    table: dict[str, Any] = {"slice": result.slices}
    for index, region in enumerate(result.regions):
        tp, fp, fn = (counts[:, index, k] for k in range(3))
        table[column(result, region, "predicted_pixels")] = tp + fp
        table[column(result, region, "truth_pixels")] = pd.array(
            [int(n) if known else None for n, known in zip(tp + fn, with_truth)], dtype="Int64")
        scores = dice(counts[:, index])
        assert isinstance(scores, np.ndarray)  # one Dice per slice
        table[column(result, region, "dice")] = [float(score) if known else None
                                                 for score, known in zip(scores, with_truth)]
    return pd.DataFrame(table)


def as_text(value) -> str:
    """A count as an integer, a Dice with three decimals, a missing value as a dash."""
    if value is None or pd.isna(value):
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(int(value))


def area_summary(result: CaseResult, table: pd.DataFrame, index: int) -> pd.DataFrame:
    """The numbers shown beside slice ``index``: per region its area, truth area and Dice, and the case's."""
    row, values, labels = table.iloc[index], [], []
    for region in result.regions:
        predicted, truth, slice_score = (
            column(result, region, q) for q in ("predicted_pixels", "truth_pixels", "dice"))
        case_truth = table[truth].sum() if result.has_truth else None
        values += [[row[predicted], row[truth], row[slice_score]],
                   [table[predicted].sum(), case_truth, case_dice(result, region)]]
        suffix = "" if len(result.regions) == 1 else f" · {region.replace('_', ' ')}"
        labels += [f"slice {index + 1}{suffix}", f"case{suffix}"]
    summary = pd.DataFrame(values, index=labels, columns=["tumour area (px)", "truth area (px)", "Dice"], dtype=object)
    if not result.has_truth:
        summary = summary[["tumour area (px)"]]
    return summary.map(as_text)


def compose_overlay(
    image: np.ndarray, prediction: np.ndarray, truth: np.ndarray | None, opacity: float, classes: int = 1
) -> np.ndarray:
    """RGB uint8 picture of a slice, colours blended at ``opacity``.

    One class: the scan in grey with truth (green), prediction (red) and both (yellow). Several
    classes: truth (where there is one) and prediction side by side, each class in its colour.
    """
    if classes > 1:
        panels = [fill(image, labels, opacity) for labels in (truth, prediction) if labels is not None]
        return np.concatenate(panels, axis=1)
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


def legend(result: CaseResult, index: int) -> str:
    """What the colours of slice ``index``'s picture mean."""
    has_truth = result.truths[index] is not None
    if result.classes == 1:
        return "red: prediction · green: truth · yellow: both" if has_truth else "red: prediction"
    names = result.class_names or tuple(f"class {k}" for k in range(result.classes))
    colours = " · ".join(f"{class_colour_name(k)}: {names[k].replace('_', ' ')}" for k in range(1, result.classes))
    return f"{'left: truth, right: prediction' if has_truth else 'prediction'} · {colours}"


def label_volume_bytes(result: CaseResult) -> bytes:
    """The predicted classes of a NIfTI case as ``glioseg predict`` writes them: a .nii.gz in the input's geometry."""
    labels = np.asarray(result.file_labels)[np.stack(result.predictions)]
    with tempfile.TemporaryDirectory(prefix="glioseg-viewer-") as tmp:
        path = Path(tmp) / f"{result.name}_pred.nii.gz"
        assert result.reference is not None  # a NIfTI case's result names its reference volume
        # nib.load is typed as returning any image class; a BraTS case file is a NIfTI one.
        brats.write_label_volume(labels, cast(nib.Nifti1Image, nib.load(result.reference)), path)
        return path.read_bytes()


def prediction_download(result: CaseResult) -> tuple[bytes, str, str]:
    """(data, file name, MIME type) of the prediction: the label volume of a NIfTI case, else the masks' zip."""
    if result.reference is not None:
        return label_volume_bytes(result), f"{result.name}_pred.nii.gz", "application/gzip"
    return masks_zip(result), f"{result.name}_masks.zip", "application/zip"


def page_message(message: str, server_folders: Iterable[Path]) -> str:
    """An error as the page shows it: the server's own folders (uploads, temp) are left out of paths.

    ``/tmp/glioseg-uploads-x1/TCGA_A/TCGA_A_1.tif: ...`` reads ``TCGA_A/TCGA_A_1.tif: ...``: the
    person at the page named the file, and needs nothing of how the server stores it.
    """
    for folder in sorted((str(f) for f in server_folders), key=len, reverse=True):
        message = message.replace(folder + os.sep, "").replace(folder, ".")
    return message


def upload_case_name(names: list[str]) -> str:
    """``<patient>`` from Kaggle slice names ``<patient>_<n>.tif``; ``upload`` for other names."""
    stems = sorted(Path(name).stem for name in names if is_image_tif(Path(name)))
    head, _, tail = stems[0].rpartition("_") if stems else ("", "", "")
    return head if head and tail.isdigit() else "upload"


def nifti_case_name(names: list[str]) -> str:
    """``<case>`` from BraTS file names ``<case>_<modality>.nii[.gz]``; one case per upload."""
    cases = {Path(name).name.rpartition("_")[0] for name in names}
    if len(cases) != 1 or "" in cases:
        found = ", ".join(sorted(cases - {""})) or "none"
        raise DataError(f"upload: NIfTI files must be named <case>_<modality>.nii.gz for one case (cases: {found})")
    return cases.pop()


def save_uploads(files: list[tuple[str, bytes]], root: Path) -> Path:
    """Write uploaded files into a case folder under ``root`` and return it.

    Either TIF slices (with their masks) or the NIfTI volumes of one BraTS case, named as in the
    data (``<case>_<modality>.nii.gz``, the seg file for a truth). The folder is named after the
    content, so uploading the same files again finds the same folder (and the cached
    prediction). Only the base name of each upload is used.
    """
    uploads = [(os.path.basename(name), data) for name, data in files]
    tifs = [(name, data) for name, data in uploads if Path(name).suffix.lower() in (".tif", ".tiff")]
    volumes = [(name, data) for name, data in uploads if is_nifti(Path(name))]
    if tifs and volumes:
        raise DataError("upload: TIF slices and NIfTI volumes together; upload the files of one case")
    if volumes:
        kept, case = volumes, nifti_case_name([name for name, _ in volumes])
    elif any(is_image_tif(Path(name)) for name, _ in tifs):
        kept, case = tifs, upload_case_name([name for name, _ in tifs])
    else:
        raise DataError("upload: no .tif image slices or .nii.gz volumes (only masks or other files)")
    digest = hashlib.sha256()
    for name, data in sorted(kept):
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    folder = root / digest.hexdigest()[:16] / case
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in kept:
        (folder / name).write_bytes(data)
    return folder
