"""Apply a trained model to new scans: TIF slices or kaggle_3m patient folders.

The preprocessing is the checkpoint's own (its serialized albumentations pipelines), never
re-typed, so predict cannot drift from training. Masks are written in the input's format: a
``<name>_mask.tif`` (0/255, the input's size) per slice, as Kaggle names them, plus overlay PNGs
and ``areas.csv`` (tumour pixels per slice, and per case in ``cases.csv``).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import tifffile
from tqdm import tqdm

from glioseg.data.lgg import read_image
from glioseg.errors import DataError
from glioseg.inference import predict_probabilities, select_device
from glioseg.io import atomic_path, write_csv
from glioseg.model import LoadedModel, load_model
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


def predict_inputs(loaded: LoadedModel, items: list[SliceInput], device: str, batch_size: int = 32):
    """Yield (item, original image, model-size mask) batch by batch."""
    normaliser = BatchAugment.from_pipeline(pipelines_from_dict(loaded.pipelines)["eval"])
    target = select_device(device)
    model = loaded.model.to(target)
    for start in tqdm(range(0, len(items), batch_size), desc="predict", unit="batch"):
        chunk = items[start : start + batch_size]
        originals = [load_slice(item, loaded.params.in_channels) for item in chunk]
        probabilities = predict_probabilities(model, preprocess(loaded, originals), normaliser, target, batch_size)
        yield from zip(chunk, originals, probabilities > loaded.threshold)


def to_input_size(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a model-size mask back to the input slice's size."""
    return cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)


def predict(source: Path, model: str | os.PathLike, out_dir: Path, device: str = "auto") -> pd.DataFrame:
    """Masks, overlays and tumour areas for every slice under ``source``; returns the per-slice table."""
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "areas.csv").is_file():
        raise DataError(f"{out_dir}: exists and is not an earlier predict output; choose an empty folder")
    loaded = load_model(resolve_model(model))
    items = find_inputs(source)
    rows = []
    with atomic_path(out_dir) as tmp:
        for item, image, mask in predict_inputs(loaded, items, device):
            full = to_input_size(mask, image.shape[:2])
            case_dir = tmp / item.case
            case_dir.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(case_dir / f"{item.name}_mask.tif", full * 255, photometric="minisblack")
            cv2.imwrite(str(case_dir / f"{item.name}_overlay.png"), overlay(image, None, full)[..., ::-1])
            rows.append({"case": item.case, "slice": item.name, "image": str(item.path),
                         "tumour_pixels": int(full.sum()), "model_pixels": int(mask.sum())})
        table = pd.DataFrame(rows)
        write_csv(tmp / "areas.csv", table)
        cases = table.groupby("case", as_index=False).agg(
            slices=("slice", "size"), tumour_slices=("tumour_pixels", lambda s: int((s > 0).sum())),
            tumour_pixels=("tumour_pixels", "sum"))
        write_csv(tmp / "cases.csv", cases)
    return table
