"""Apply a trained model to new scans: TIF slices, kaggle_3m patient folders, or BraTS NIfTI cases.

The preprocessing is the checkpoint's own (its serialized albumentations pipelines and, for
BraTS, its modalities, suffixes and intensity window), never re-typed, so predict cannot drift
from training. Slices go through :class:`glioseg.inference.predictor.Predictor`, the path evaluate and the
viewer take, with the model file's inference settings (threshold, TTA, post-processing) unless
``inference`` overrides them. Masks are written in the input's format:

- LGG: a ``<name>_mask.tif`` (0/255, the input's size) per slice, as Kaggle names them, and an
  overlay PNG per slice;
- BraTS: ``<case>/<case>_pred.nii.gz`` with the input's affine, header and voxel order and the
  files' own label values (the inverse of ``label_map``), and overlay PNGs of slices with tumour.

``areas.csv`` has the tumour pixels per slice (per class for BraTS), ``cases.csv`` the totals
per case, with volumes in millilitres for NIfTI input, and ``prediction.json`` the model(s) and
inference settings the masks came from; the three describe the latest run.

The output folder is shared with the user (:mod:`glioseg.inference.owned_output`): predict removes no file,
so cases predicted one after another into one folder accumulate; it replaces only files it wrote
there before unless told to, never an input's own truth mask, and never writes through a symlink
out of the folder.

Models are named as :mod:`glioseg.model.specs` reads them; several make a fold ensemble.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import cv2
import nibabel as nib
import numpy as np
import pandas as pd
import tifffile
from pydantic import ValidationError
from tqdm import tqdm

from glioseg.config.sections import InferenceParams
from glioseg.data.formats import brats
from glioseg.data.formats.lgg import read_image
from glioseg.errors import ConfigError, DataError
from glioseg.figures import overlay
from glioseg.inference.owned_output import check_output_folder, staged_output
from glioseg.inference.predictor import Predictor
from glioseg.model.checkpoint import LoadedModel, ModelSet, describe_models
from glioseg.model.specs import load_models, model_specs

RECORD = "prediction.json"
DEVICE_OPTION = "--device"  # where predict's and the viewer's device comes from, for its error


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
    nested = [p for p in sorted(source.iterdir()) if p.is_dir()]
    found = [item for folder in nested for item in find_inputs_in_case(folder)]
    if direct and found:  # either reading alone would silently leave the other's slices out
        raise DataError(f"{source}: holds both slices ({direct[0].path.name}{', ...' if len(direct) > 1 else ''}) "
                        f"and patient folders of slices ({found[0].case}, ...); move the loose slices out, or give "
                        "one patient folder")
    if not (direct or found):
        raise DataError(f"{source}: no .tif image slices found")
    return direct or found


def find_inputs_in_case(folder: Path) -> list[SliceInput]:
    files = [p for p in folder.iterdir() if p.is_file() and is_image_tif(p)]
    return [SliceInput(folder.name, p.stem, p) for p in _by_slice_number(files)]


def _by_slice_number(files: list[Path]) -> list[Path]:
    def key(path: Path) -> tuple[str, int]:
        head, _, tail = path.stem.rpartition("_")
        return (head, int(tail)) if tail.isdigit() else (path.stem, -1)

    return sorted(files, key=key)


def load_slice(item: SliceInput, channels: int) -> np.ndarray:
    image = read_image(item.path)
    if image.shape[-1] != channels:
        raise DataError(f"{item.path}: {image.shape[-1]} channels, the model expects {channels}")
    return image


def inference_options(**options: Any) -> dict[str, Any]:
    """The inference settings given (None: not given), validated; a bad one is a one-line error naming its option."""
    given = {key: value for key, value in options.items() if value is not None}
    try:
        validated = InferenceParams.model_validate(given)
    except ValidationError as exc:
        error = exc.errors()[0]
        option = "--" + str(error["loc"][0]).replace("_", "-")
        if error["type"] == "extra_forbidden":
            raise ConfigError(f"{option}: no such inference setting (known: "
                              f"{', '.join(InferenceParams.model_fields)})") from None
        raise ConfigError(f"{option}: {error['msg']} (got {error.get('input')!r})") from None
    return {key: getattr(validated, key) for key in given}


def inference_settings(
    loaded: LoadedModel | ModelSet, inference: InferenceParams | Mapping[str, Any] | None = None
) -> InferenceParams:
    """The settings predict uses: the model file's (None), ``inference`` itself, or, for a mapping such as
    the command's options, the model file's with the settings it gives replaced."""
    if inference is None or isinstance(inference, InferenceParams):
        return inference or loaded.inference
    return loaded.inference.model_copy(update=inference_options(**inference))


def predictor(loaded: LoadedModel | ModelSet, device: str = "auto", inference: InferenceParams | None = None,
              batch_size: int = 32) -> Predictor:
    """The shared :class:`Predictor`, its device named ``--device`` in errors (predict's and the viewer's option)."""
    return Predictor(loaded, device, inference, batch_size, device_setting=DEVICE_OPTION)


def predict_inputs(loaded: LoadedModel | ModelSet, items: list[SliceInput], device: str = "auto",
                   inference: InferenceParams | None = None, batch_size: int = 32):
    """Yield (item, original image, model-size mask), case by case.

    A case's slices are predicted together so that the post-processing sees the case's volume,
    as evaluation does; ``inference`` overrides the model file's settings.
    """
    shared = predictor(loaded, device, inference, batch_size)
    cases = [list(group) for _, group in itertools.groupby(items, key=lambda item: item.case)]
    for case in tqdm(cases, desc="predict", unit="case"):
        originals = [load_slice(item, shared.slice_channels) for item in case]
        where = case[0].path if len(case) == 1 else case[0].path.parent
        yield from zip(case, originals, shared.predict_case(originals, str(where)))


def to_input_size(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a model-size mask back to the input slice's size."""
    return cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)


def write_overlay(path: Path, image: np.ndarray, labels: np.ndarray, classes: int) -> None:
    # Encoded here and written by Python: cv2.imwrite only returns False on a full disk, with no error.
    path.write_bytes(cv2.imencode(".png", overlay(image, None, labels, classes)[..., ::-1])[1].tobytes())


def predict_tifs(loaded: LoadedModel | ModelSet, source: Path, out: Path, device: str,
                 inference: InferenceParams | None = None) -> list[dict]:
    """LGG slices: ``<slice>_mask.tif`` and an overlay per slice; one table row per slice."""
    rows = []
    for item, image, mask in predict_inputs(loaded, find_inputs(source), device, inference):
        full = to_input_size(mask, image.shape[:2])
        case_dir = out / item.case
        case_dir.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(case_dir / f"{item.name}_mask.tif", full * 255, photometric="minisblack")
        write_overlay(case_dir / f"{item.name}_overlay.png", image, full, loaded.classes)
        rows.append({"case": item.case, "slice": item.name, "image": str(item.path),
                     "tumour_pixels": int(full.sum()), "model_pixels": int(mask.sum())})
    return rows


def predict_volume(loaded: LoadedModel | ModelSet, images: np.ndarray, device: str = "auto",
                   inference: InferenceParams | None = None) -> np.ndarray:
    """(Z,H,W) class labels at the input size for a case's axial slices (Z,H,W,C).

    The case is predicted and post-processed at model size, as evaluate does, then resized back.
    """
    masks = predictor(loaded, device, inference).predict_case(list(images))
    return np.stack([to_input_size(mask, images.shape[1:3]) for mask in masks])


def reference_volume(loaded: LoadedModel | ModelSet, folder: Path) -> Path:
    """The file whose affine, header and voxel order a case's predicted label volume takes (its first modality)."""
    params = loaded.brats
    assert params is not None  # a BraTS model's data card says how its cases are read
    return brats.case_files(folder, params, with_labels=False)[params.modalities[0]]


def write_nifti_case(loaded: LoadedModel | ModelSet, folder: Path, out: Path, device: str = "auto",
                     inference: InferenceParams | None = None) -> list[dict]:
    """One NIfTI case: the label volume aligned with the input, overlays, one row per axial slice."""
    params = loaded.brats
    assert params is not None  # a BraTS model's data card says how its cases are read
    case = brats.read_case(folder, params, with_labels=False)
    reference_path = reference_volume(loaded, folder)
    # nib.load is typed as returning any image class; a BraTS case file is a NIfTI one.
    reference = cast(nib.Nifti1Image, nib.load(reference_path))
    labels = predict_volume(loaded, case.images, device, inference)
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


def predict_nifti(loaded: LoadedModel | ModelSet, source: Path, out: Path, device: str,
                  inference: InferenceParams | None = None) -> list[dict]:
    """BraTS cases: a label volume and overlays per case; one table row per axial slice."""
    rows = []
    for folder in tqdm(find_nifti_cases(source), desc="predict", unit="case"):
        rows += write_nifti_case(loaded, folder, out, device, inference)
    return rows


def protected_files(loaded: LoadedModel | ModelSet, source: Path) -> list[Path]:
    """The files predict reads and the truth masks beside them: no prediction may be written over one."""
    if loaded.dataset == "brats":
        params = loaded.brats
        assert params is not None  # a BraTS model's data card says how its cases are read
        files: list[Path] = []
        for folder in find_nifti_cases(source):
            files += brats.case_files(folder, params, with_labels=False).values()
            truth = brats.find_file(folder, params.suffixes[brats.LABELS])
            files += [truth] if truth else []
        return files
    slices = [item.path for item in find_inputs(source)]
    masks = [path.with_name(f"{path.stem}_mask.tif") for path in slices]
    return slices + [mask for mask in masks if mask.is_file()]


def check_input_kind(loaded: LoadedModel | ModelSet, source: Path, model: str | os.PathLike) -> None:
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


def predict(
    source: Path,
    model: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: Path,
    device: str = "auto",
    inference: InferenceParams | Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> pd.DataFrame:
    """Masks, overlays and tumour areas for every slice under ``source``; returns the per-slice table.

    ``out_dir`` gains predict's files and loses none (:mod:`glioseg.inference.owned_output`): a file predict
    wrote there before (listed in its manifest) may be rewritten; any other file of the same name,
    and a folder holding files but no manifest, are refused unless ``overwrite``. Never, even with
    ``overwrite``: a prediction over an input's truth mask (``--out`` the input's own folder
    tree), or a write through a symlink leading out of ``out_dir``. Every refusal, and a full or
    read-only disk, is a one-line error and leaves ``out_dir`` as it was.

    ``inference``: None predicts with the model file's settings; an :class:`InferenceParams`
    replaces them; a mapping (the command's ``--threshold``/``--tta``/``--postprocess``) replaces
    only the settings it gives.
    """
    check_output_folder(out_dir, overwrite)
    names = model_specs(model)
    loaded = load_models(names)
    check_input_kind(loaded, source, ", ".join(names))
    settings = inference_settings(loaded, inference)
    with staged_output(out_dir, overwrite, protected_files(loaded, source)) as tmp:
        predict_cases = predict_nifti if loaded.dataset == "brats" else predict_tifs
        table = pd.DataFrame(predict_cases(loaded, source, tmp, device, settings))
        # Plain writes: the staging folder already makes them appear whole or not at all.
        table.to_csv(tmp / "areas.csv", index=False)
        case_totals(table).to_csv(tmp / "cases.csv", index=False)
        record = {"source": str(source), "models": describe_models(loaded, tuple(names)),
                  "inference": settings.model_dump(mode="json")}
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return table
