"""What the viewer computes, free of Streamlit: cases, predictions, areas, Dice, overlays, downloads.

A case is a case folder of any data format (:mod:`glioseg.formats`), read and predicted on
``glioseg predict``'s own path (:mod:`glioseg.inference.scans`), so the viewer shows, and lets you
download, exactly the files predict writes. Areas and Dice are given per evaluation region of the
model (LGG: tumour; BraTS: whole tumour, tumour core, enhancing tumour).
"""

from __future__ import annotations

import functools
import hashlib
import io
import mimetypes
import os
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from glioseg import paths
from glioseg.errors import DataError
from glioseg.figures import PREDICTION_COLOUR, TRUTH_COLOUR, class_colour_name, display_image, fill
from glioseg.formats import FORMATS, format_of_case
from glioseg.formats.base import TUMOUR_REGIONS, DataFormat, Scan, ScanRef
from glioseg.inference.scans import check_input_kind, predict_scan, predictor, read_scan
from glioseg.metrics import Regions, dice, region_confusion
from glioseg.model.checkpoint import LoadedModel, ModelSet
from glioseg.model.specs import load_models

OVERLAP_COLOUR = (255, 255, 0)
DISPLAY_SIZE = 512


@dataclass(frozen=True)
class Case:
    """A case to show: its folder, the format it is in and the format's reference to it, read when it is
    predicted."""

    name: str
    folder: Path
    data_format: DataFormat[Any]
    ref: ScanRef

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file() and not p.name.startswith("."))


@dataclass(frozen=True)
class CaseResult:
    """A predicted case: per slice its image, predicted class labels at input size and truth (or None).

    ``regions`` are the model's evaluation regions (sets of class labels); with ``scan``, its
    ``data_format`` and the model's ``format_settings``, the prediction is written back in the
    case's own files for the download.
    """

    name: str
    slices: tuple[str, ...]
    images: tuple[np.ndarray, ...]
    predictions: tuple[np.ndarray, ...]
    truths: tuple[np.ndarray | None, ...]
    regions: Regions = field(default_factory=lambda: dict(TUMOUR_REGIONS))
    classes: int = 1
    class_names: tuple[str, ...] = ()
    scan: Scan | None = None
    data_format: DataFormat[Any] | None = None
    format_settings: Any = None

    @property
    def has_truth(self) -> bool:
        return any(truth is not None for truth in self.truths)

    @functools.cached_property
    def counts(self) -> np.ndarray:
        """(slices, regions, 4) tp/fp/fn/tn of every slice and region (:func:`metrics.region_confusion`).

        A slice without truth is counted against an empty one, so its tp + fp is still its
        predicted area. Computed once per result: the page's table and case Dice both read it.
        """
        return np.stack(
            [
                region_confusion(p[None], (np.zeros_like(p) if t is None else t)[None], self.regions)[0]
                for p, t in zip(self.predictions, self.truths)
            ]
        )


def default_data_folder(loaded: LoadedModel | ModelSet) -> Path:
    """Where the pipeline keeps the raw cases of the model's dataset: the viewer's folder without ``--data``."""
    return paths.raw_cases(loaded.format.raw_name)


def list_cases(root: Path) -> list[str]:
    """Names of the case folders of any format under ``root``; none when it is missing (uploads still work)."""
    if not root.is_dir():
        return []
    return [
        p.name
        for p in sorted(root.iterdir())
        if p.is_dir() and not p.name.startswith(".") and any(data_format.is_case(p) for data_format in FORMATS.values())
    ]


def load_case(folder: Path) -> Case:
    """A case from its folder, in whichever format it is (:func:`glioseg.formats.format_of_case`)."""
    data_format = format_of_case(folder)
    return Case(folder.name, folder, data_format, data_format.find_scans(folder)[0])


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


def case_result(loaded: LoadedModel | ModelSet, case: Case, device: str = "auto") -> CaseResult:
    """The case predicted as ``glioseg predict`` would; a model of another format is a one-line error."""
    check_input_kind(loaded, case.folder, "in use")
    shared = predictor(loaded, device)
    scan = read_scan(loaded, case.ref, shared.slice_channels)
    _, labels = predict_scan(shared, scan)
    settings = loaded.format_settings
    return CaseResult(
        case.name,
        scan.names,
        scan.images,
        tuple(labels),
        scan.truths,
        loaded.regions,
        loaded.classes,
        loaded.format.class_names(settings),
        scan,
        loaded.format,
        settings,
    )


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
            [int(n) if known else None for n, known in zip(tp + fn, with_truth)], dtype="Int64"
        )
        scores = dice(counts[:, index])
        assert isinstance(scores, np.ndarray)  # one Dice per slice
        table[column(result, region, "dice")] = [
            float(score) if known else None for score, known in zip(scores, with_truth)
        ]
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
            column(result, region, q) for q in ("predicted_pixels", "truth_pixels", "dice")
        )
        case_truth = table[truth].sum() if result.has_truth else None
        values += [
            [row[predicted], row[truth], row[slice_score]],
            [table[predicted].sum(), case_truth, case_dice(result, region)],
        ]
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
    for region, colour in (
        (true & ~predicted, TRUTH_COLOUR),
        (predicted & ~true, PREDICTION_COLOUR),
        (predicted & true, OVERLAP_COLOUR),
    ):
        out[region] = (1 - opacity) * out[region] + opacity * np.asarray(colour, np.float32)
    return np.round(out).astype(np.uint8)


def enlarge(image: np.ndarray, size: int = DISPLAY_SIZE) -> np.ndarray:
    """Nearest-neighbour upscale by a whole factor towards ``size`` px, so small slices show crisp pixels."""
    factor = max(1, size // max(image.shape[:2]))
    return cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)


def legend(result: CaseResult, index: int) -> str:
    """What the colours of slice ``index``'s picture mean."""
    has_truth = result.truths[index] is not None
    if result.classes == 1:
        return "red: prediction · green: truth · yellow: both" if has_truth else "red: prediction"
    names = result.class_names or tuple(f"class {k}" for k in range(result.classes))
    colours = " · ".join(f"{class_colour_name(k)}: {names[k].replace('_', ' ')}" for k in range(1, result.classes))
    return f"{'left: truth, right: prediction' if has_truth else 'prediction'} · {colours}"


def mime_type(name: str) -> str:
    """A download's MIME type from its file name; a gzip-compressed file is served as gzip."""
    kind, encoding = mimetypes.guess_type(name)
    return "application/gzip" if encoding == "gzip" else kind or "application/octet-stream"


def prediction_download(result: CaseResult) -> tuple[bytes, str, str]:
    """(data, file name, MIME type) of the prediction as ``glioseg predict`` writes it: its one file (a NIfTI
    case's label volume), or a zip of ``<case>/<file>`` when the format writes several (TIF masks)."""
    assert result.scan is not None and result.data_format is not None  # made by case_result
    with tempfile.TemporaryDirectory(prefix="glioseg-viewer-") as tmp:
        written = result.data_format.write_prediction(
            result.scan, list(result.predictions), Path(tmp), result.format_settings
        )
        if len(written) == 1:
            path = written[0]
            return path.read_bytes(), path.name, mime_type(path.name)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in written:
                archive.write(path, f"{result.name}/{path.name}")
        return buffer.getvalue(), f"{result.name}_masks.zip", "application/zip"


def download_name(file_name: str) -> str:
    """What the download button offers: the case's one prediction file (a label volume), or its masks zipped."""
    return "masks (zip)" if file_name.endswith(".zip") else f"label volume ({file_name})"


def page_message(message: str, server_folders: Iterable[Path]) -> str:
    """An error as the page shows it: the server's own folders (uploads, temp) are left out of paths.

    ``/tmp/glioseg-uploads-x1/TCGA_A/TCGA_A_1.tif: ...`` reads ``TCGA_A/TCGA_A_1.tif: ...``: the
    person at the page named the file, and needs nothing of how the server stores it.
    """
    for folder in sorted((str(f) for f in server_folders), key=len, reverse=True):
        message = message.replace(folder + os.sep, "").replace(folder, ".")
    return message


def upload_request() -> tuple[str, list[str]]:
    """What the upload box asks for, and the file extensions it takes, from every format that takes uploads."""
    formats = [f for f in FORMATS.values() if f.upload_help]
    return "One case: " + ", or ".join(f.upload_help for f in formats), [t for f in formats for t in f.upload_types]


def save_uploads(files: list[tuple[str, bytes]], root: Path) -> Path:
    """Write uploaded files into a case folder under ``root`` and return it.

    The files of one case of one format, named as in its data (each format's ``upload_case``); files
    no format takes are left out. The folder is named after the content, so uploading the same files
    again finds the same folder (and the cached prediction). Only the base name of each upload is used.
    """
    uploads = [(os.path.basename(name), data) for name, data in files]
    claimed = {name: [(n, d) for n, d in uploads if f.accepts_upload(n)] for name, f in FORMATS.items()}
    claimed = {name: kept for name, kept in claimed.items() if kept}
    if len(claimed) > 1:
        shown = " and ".join(f"{FORMATS[name].scans} ({kept[0][0]})" for name, kept in claimed.items())
        raise DataError(f"upload: {shown} together; upload the files of one case")
    found = [(FORMATS[name].upload_case([n for n, _ in kept]), kept) for name, kept in claimed.items()]
    if not found or found[0][0] is None:
        known = " or ".join(f.scans for f in FORMATS.values())
        raise DataError(f"upload: no {known} (only masks or other files)")
    case, kept = found[0]
    assert case is not None  # checked above
    digest = hashlib.sha256()
    for name, data in sorted(kept):
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    folder = root / digest.hexdigest()[:16] / case
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in kept:
        (folder / name).write_bytes(data)
    return folder
