"""Apply a trained model to new scans: TIF slices, kaggle_3m patient folders, or BraTS NIfTI cases.

The preprocessing is the checkpoint's own (its serialized albumentations pipelines and, for
BraTS, its modalities, suffixes and intensity window), never re-typed, so predict cannot drift
from training. Masks are written in the input's format:

- LGG: a ``<name>_mask.tif`` (0/255, the input's size) per slice, as Kaggle names them, and an
  overlay PNG per slice;
- BraTS: ``<case>/<case>_pred.nii.gz`` with the input's affine, header and voxel order and the
  files' own label values (the inverse of ``label_map``), and overlay PNGs of slices with tumour.

``areas.csv`` has the tumour pixels per slice (per class for BraTS) and ``cases.csv`` the totals
per case, with volumes in millilitres for NIfTI input.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pandas as pd
import tifffile
from tqdm import tqdm

from glioseg.data import brats
from glioseg.data.lgg import read_image
from glioseg.errors import DataError
from glioseg.inference import predict_labels, select_device
from glioseg.io import atomic_path, write_csv
from glioseg.model import LoadedModel, load_model
from glioseg.postprocess import postprocess_case
from glioseg.transforms import BatchAugment, pipelines_from_dict
from glioseg.viz import overlay

CHECKPOINT_ARTIFACT = "checkpoint/model.pt"


@dataclass(frozen=True)
class SliceInput:
    case: str
    name: str
    path: Path


def is_image_tif(path: Path) -> bool:
    return path.suffix.lower() in (".tif", ".tiff") and not path.stem.endswith("_mask")


def is_nifti(path: Path) -> bool:
    return path.name.endswith(brats.EXTENSIONS)


def find_nifti_cases(source: Path) -> list[Path]:
    """Case folders for a NIfTI file (its folder), a case folder, or a folder of case folders."""
    if not source.exists():
        raise DataError(f"{source}: input not found")
    if source.is_file():
        if not is_nifti(source):
            raise DataError(f"{source}: expected a NIfTI file (.nii or .nii.gz) of a BraTS case")
        return [source.parent]
    return [source] if brats.is_case_folder(source) else brats.list_cases(source)


def contains_nifti(source: Path) -> bool:
    if source.is_file():
        return is_nifti(source)
    return source.is_dir() and any(is_nifti(p) for p in [*source.glob("*.nii*"), *source.glob("*/*.nii*")])


def find_inputs(source: Path) -> list[SliceInput]:
    """One TIF slice, a patient folder of slices, or a folder of patient folders."""
    if not source.exists():
        raise DataError(f"{source}: input not found")
    if source.is_file():
        if not is_image_tif(source):
            raise DataError(f"{source}: expected a .tif image slice (not a mask)")
        return [SliceInput(source.parent.name, source.stem, source)]
    direct = find_inputs_in_case(source)
    if direct:
        return direct
    nested = [p for p in sorted(source.iterdir()) if p.is_dir()]
    found = [item for folder in nested for item in find_inputs_in_case(folder)]
    if not found:
        raise DataError(f"{source}: no .tif image slices found")
    return found


def find_inputs_in_case(folder: Path) -> list[SliceInput]:
    files = [p for p in folder.iterdir() if p.is_file() and is_image_tif(p)]
    return [SliceInput(folder.name, p.stem, p) for p in _by_slice_number(files)]


def _by_slice_number(files: list[Path]) -> list[Path]:
    def key(path: Path) -> tuple[str, int]:
        head, _, tail = path.stem.rpartition("_")
        return (head, int(tail)) if tail.isdigit() else (path.stem, -1)

    return sorted(files, key=key)


def resolve_model(spec: str | os.PathLike) -> Path:
    """A checkpoint path from a file, ``runs:/<run id>[/...]`` or ``models:/<name>/<version>``.

    For MLflow URIs the run's glioseg checkpoint artifact is downloaded (it loads with
    ``weights_only=True``); the pickled MLflow model is never unpickled.
    """
    spec = str(spec)
    if not spec.startswith(("runs:/", "models:/")):
        return Path(spec)
    from glioseg import tracking

    client = tracking.client()
    if spec.startswith("models:/"):
        name, _, version = spec.removeprefix("models:/").partition("/")
        try:
            run_id = client.get_model_version(name, version).run_id
        except Exception as exc:  # MLflow raises its own exception types for unknown models
            raise DataError(f"{spec}: no such registered model version ({type(exc).__name__})") from None
    else:
        run_id = spec.removeprefix("runs:/").split("/")[0]
    target = Path(tempfile.mkdtemp(prefix="glioseg-model-"))
    try:
        return Path(client.download_artifacts(run_id, CHECKPOINT_ARTIFACT, str(target)))
    except Exception as exc:
        raise DataError(f"{spec}: run has no glioseg checkpoint artifact ({type(exc).__name__})") from None


def load_slice(item: SliceInput, channels: int) -> np.ndarray:
    image = read_image(item.path)
    if image.shape[-1] != channels:
        raise DataError(f"{item.path}: {image.shape[-1]} channels, the model expects {channels}")
    return image


def preprocess(loaded: LoadedModel, images: list[np.ndarray]) -> np.ndarray:
    resize = pipelines_from_dict(loaded.pipelines)["preprocess"]
    return np.stack([resize(image=image)["image"] for image in images])


class Predictor:
    """A loaded model on its device with its eval normalisation: model-size class labels for images."""

    def __init__(self, loaded: LoadedModel, device: str, batch_size: int = 32):
        self.loaded = loaded
        self.device = select_device(device)
        self.model = loaded.model.to(self.device)
        self.normaliser = BatchAugment.from_pipeline(pipelines_from_dict(loaded.pipelines)["eval"])
        self.batch_size = batch_size

    def __call__(self, originals: list[np.ndarray]) -> np.ndarray:
        return predict_labels(self.model, preprocess(self.loaded, originals), self.normaliser, self.device,
                              self.loaded.threshold, self.batch_size, tta=self.loaded.tta)


def predict_inputs(loaded: LoadedModel, items: list[SliceInput], device: str, batch_size: int = 32):
    """Yield (item, original image, model-size mask), case by case.

    A case's slices are predicted together so that the model's post-processing sees the case's
    volume, as evaluation does.
    """
    predictor = Predictor(loaded, device, batch_size)
    cases = [list(group) for _, group in itertools.groupby(items, key=lambda item: item.case)]
    for case in tqdm(cases, desc="predict", unit="case"):
        originals = [load_slice(item, loaded.params.in_channels) for item in case]
        masks = postprocess_case(predictor(originals), loaded.postprocess)
        yield from zip(case, originals, masks)


def to_input_size(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a model-size mask back to the input slice's size."""
    return cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)


def write_overlay(path: Path, image: np.ndarray, labels: np.ndarray, classes: int) -> None:
    cv2.imwrite(str(path), overlay(image, None, labels, classes)[..., ::-1])


def predict_tifs(loaded: LoadedModel, source: Path, out: Path, device: str) -> list[dict]:
    """LGG slices: ``<slice>_mask.tif`` and an overlay per slice; one table row per slice."""
    rows = []
    for item, image, mask in predict_inputs(loaded, find_inputs(source), device):
        full = to_input_size(mask, image.shape[:2])
        case_dir = out / item.case
        case_dir.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(case_dir / f"{item.name}_mask.tif", full * 255, photometric="minisblack")
        write_overlay(case_dir / f"{item.name}_overlay.png", image, full, loaded.classes)
        rows.append({"case": item.case, "slice": item.name, "image": str(item.path),
                     "tumour_pixels": int(full.sum()), "model_pixels": int(mask.sum())})
    return rows


def predict_volume(loaded: LoadedModel, predictor: Predictor, images: np.ndarray) -> np.ndarray:
    """(Z,H,W) class labels at the input size for a case's axial slices (Z,H,W,C), post-processed per case."""
    height, width = images.shape[1:3]
    labels = np.empty(images.shape[:3], np.uint8)
    for start in range(0, len(labels), predictor.batch_size):
        batch = list(images[start : start + predictor.batch_size])
        for offset, mask in enumerate(predictor(batch)):
            labels[start + offset] = to_input_size(mask, (height, width))
    return postprocess_case(labels, loaded.postprocess)


def reference_volume(loaded: LoadedModel, folder: Path) -> Path:
    """The file whose affine, header and voxel order a case's predicted label volume takes (its first modality)."""
    params = loaded.brats
    return brats.case_files(folder, params, with_labels=False)[params.modalities[0]]


def predict_case(loaded: LoadedModel, predictor: Predictor, folder: Path, out: Path) -> list[dict]:
    """One NIfTI case: the label volume aligned with the input, overlays, one row per axial slice."""
    params = loaded.brats
    case = brats.read_case(folder, params, with_labels=False)
    reference_path = reference_volume(loaded, folder)
    reference = nib.load(reference_path)
    labels = predict_volume(loaded, predictor, case.images)
    case_dir = out / case.name
    case_dir.mkdir(parents=True)
    file_labels = brats.source_labels(params.label_map)[labels]
    brats.write_label_volume(file_labels, reference, case_dir / f"{case.name}_pred.nii.gz")
    voxel_ml = float(np.prod(reference.header.get_zooms()[:3])) / 1000.0
    rows = []
    for z, slice_labels in enumerate(labels):
        if slice_labels.any():
            write_overlay(case_dir / f"{case.name}_{z:03d}_overlay.png", case.images[z], slice_labels, loaded.classes)
        counts = np.bincount(slice_labels.ravel(), minlength=loaded.classes)
        rows.append({"case": case.name, "slice": z, "image": str(reference_path),
                     "tumour_pixels": int(counts[1:].sum()), "voxel_ml": voxel_ml,
                     **{f"{name}_pixels": int(counts[k]) for k, name in enumerate(params.class_names) if k > 0}})
    return rows


def predict_nifti(loaded: LoadedModel, source: Path, out: Path, device: str) -> list[dict]:
    predictor = Predictor(loaded, device)
    rows = []
    for folder in tqdm(find_nifti_cases(source), desc="predict", unit="case"):
        rows += predict_case(loaded, predictor, folder, out)
    return rows


def check_input_kind(loaded: LoadedModel, source: Path, model: str | os.PathLike) -> None:
    """A BraTS model reads NIfTI cases and an LGG model TIF slices; anything else is an error."""
    nifti = contains_nifti(source)
    if loaded.dataset == "brats" and not nifti:
        raise DataError(f"{source}: model {model} was trained on BraTS and reads NIfTI cases, not TIF slices")
    if loaded.dataset == "lgg" and nifti:
        raise DataError(f"{source}: model {model} was trained on LGG TIF slices and cannot read NIfTI volumes")


def case_totals(table: pd.DataFrame) -> pd.DataFrame:
    """Per case: slices, slices with tumour, tumour pixels (and per class and in ml for NIfTI)."""
    pixel_columns = [c for c in table.columns if c.endswith("_pixels") and c != "model_pixels"]
    cases = table.groupby("case", as_index=False).agg(
        slices=("slice", "size"), tumour_slices=("tumour_pixels", lambda s: int((s > 0).sum())),
        **{column: (column, "sum") for column in pixel_columns})
    if "voxel_ml" in table:
        voxel_ml = table.groupby("case")["voxel_ml"].first().to_numpy()
        for column in pixel_columns:
            cases[column.replace("_pixels", "_ml")] = (cases[column] * voxel_ml).round(3)
    return cases


def predict(source: Path, model: str | os.PathLike, out_dir: Path, device: str = "auto") -> pd.DataFrame:
    """Masks, overlays and tumour areas for every slice under ``source``; returns the per-slice table."""
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "areas.csv").is_file():
        raise DataError(f"{out_dir}: exists and is not an earlier predict output; choose an empty folder")
    loaded = load_model(resolve_model(model))
    check_input_kind(loaded, source, model)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True, exist_ok=True)
        predict_cases = predict_nifti if loaded.dataset == "brats" else predict_tifs
        table = pd.DataFrame(predict_cases(loaded, source, tmp, device))
        write_csv(tmp / "areas.csv", table)
        write_csv(tmp / "cases.csv", case_totals(table))
    return table
