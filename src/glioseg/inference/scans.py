"""`glioseg predict`: a trained model applied to new scans of its data format, masks written back in that format.

The model's format (:mod:`glioseg.formats`) finds and reads the cases and writes the masks (LGG:
a ``<slice>_mask.tif`` per slice; BraTS: ``<case>_pred.nii.gz`` in the input's geometry) with the
checkpoint's own preprocessing, never re-typed. Slices go through the
:class:`~glioseg.inference.predictor.Predictor` evaluate and the viewer take. ``areas.csv`` has the
tumour pixels per slice, ``cases.csv`` the totals per case (in millilitres where the format knows a
voxel's volume), ``prediction.json`` the model(s) and inference settings. The output folder is
shared with the user (:mod:`glioseg.inference.owned_output`): predict removes nothing there and
never writes over an input or its truth.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from pydantic import ValidationError
from tqdm import tqdm

from glioseg.config.sections import InferenceParams
from glioseg.errors import ConfigError, DataError
from glioseg.figures import overlay
from glioseg.formats import format_holding
from glioseg.formats.base import Scan, ScanRef
from glioseg.inference.owned_output import check_output_folder, staged_output
from glioseg.inference.predictor import Predictor
from glioseg.model.checkpoint import LoadedModel, ModelSet, describe_models
from glioseg.model.specs import load_models, model_specs

RECORD = "prediction.json"
DEVICE_OPTION = "--device"  # where predict's and the viewer's device comes from, for its error


def read_scan(loaded: LoadedModel | ModelSet, ref: ScanRef, channels: int) -> Scan:
    """A case read by the model's format, its slices checked against the channels the model expects."""
    scan = loaded.format.read_scan(ref, loaded.format_settings)
    for source, image in zip(scan.sources, scan.images):
        if image.shape[-1] != channels:
            raise DataError(f"{source}: {image.shape[-1]} channels, the model expects {channels}")
    return scan


def predict_scan(shared: Predictor, scan: Scan) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A case's predicted labels at model size and at each slice's input size.

    The case's slices are predicted together so that the post-processing sees the case's volume,
    as evaluate does.
    """
    where = scan.sources[0] if len(scan.sources) == 1 else scan.ref.folder
    masks = list(shared.predict_case(list(scan.images), str(where)))
    return masks, [to_input_size(mask, image.shape[:2]) for mask, image in zip(masks, scan.images)]


def inference_options(**options: Any) -> dict[str, Any]:
    """The inference settings given (None: not given), validated; a bad one is a one-line error naming its option."""
    given = {key: value for key, value in options.items() if value is not None}
    try:
        validated = InferenceParams.model_validate(given)
    except ValidationError as exc:
        error = exc.errors()[0]
        option = "--" + str(error["loc"][0]).replace("_", "-")
        if error["type"] == "extra_forbidden":
            raise ConfigError(
                f"{option}: no such inference setting (known: {', '.join(InferenceParams.model_fields)})"
            ) from None
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


def predictor(
    loaded: LoadedModel | ModelSet, device: str = "auto", inference: InferenceParams | None = None, batch_size: int = 32
) -> Predictor:
    """The shared :class:`Predictor`, its device named ``--device`` in errors (predict's and the viewer's option)."""
    return Predictor(loaded, device, inference, batch_size, device_setting=DEVICE_OPTION)


def to_input_size(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a model-size mask back to the input slice's size."""
    return cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)


def write_overlay(path: Path, image: np.ndarray, labels: np.ndarray, classes: int) -> None:
    # Encoded here and written by Python: cv2.imwrite only returns False on a full disk, with no error.
    path.write_bytes(cv2.imencode(".png", overlay(image, None, labels, classes)[..., ::-1])[1].tobytes())


def slice_rows(
    scan: Scan, masks: list[np.ndarray], labels: list[np.ndarray], class_names: tuple[str, ...], classes: int
) -> list[dict]:
    """One areas-table row per slice: tumour pixels at input and model size, per class for a multi-class
    model, and a voxel's volume where the format knows it."""
    rows = []
    for index, (mask, slice_labels) in enumerate(zip(masks, labels)):
        counts = np.bincount(slice_labels.ravel(), minlength=classes)
        rows.append(
            {
                "case": scan.ref.name,
                "slice": scan.ids[index],
                "image": str(scan.sources[index]),
                "tumour_pixels": int(counts[1:].sum()),
                "model_pixels": int((mask > 0).sum()),
                **({} if scan.voxel_ml is None else {"voxel_ml": scan.voxel_ml}),
                **{f"{name}_pixels": int(counts[k]) for k, name in enumerate(class_names) if k > 0},
            }
        )
    return rows


def predict_cases(
    loaded: LoadedModel | ModelSet,
    refs: list[ScanRef],
    out: Path,
    device: str,
    inference: InferenceParams | None = None,
) -> list[dict]:
    """Every case: the masks in the format's own files, overlays, one table row per slice."""
    shared = predictor(loaded, device, inference)
    data_format, settings = loaded.format, loaded.format_settings
    class_names = data_format.class_names(settings)
    rows = []
    for ref in tqdm(refs, desc="predict", unit="case"):
        scan = read_scan(loaded, ref, shared.slice_channels)
        masks, labels = predict_scan(shared, scan)
        case_dir = out / ref.name
        case_dir.mkdir(parents=True, exist_ok=True)
        data_format.write_prediction(scan, labels, case_dir, settings)
        for name, image, slice_labels in zip(scan.names, scan.images, labels):
            if data_format.overlay_every_slice or slice_labels.any():
                write_overlay(case_dir / f"{name}_overlay.png", image, slice_labels, loaded.classes)
        rows += slice_rows(scan, masks, labels, class_names, loaded.classes)
    return rows


def protected_files(loaded: LoadedModel | ModelSet, refs: list[ScanRef]) -> list[Path]:
    """The files predict reads and the truth masks beside them: no prediction may be written over one."""
    return [path for ref in refs for path in loaded.format.case_files(ref, loaded.format_settings)]


def check_input_kind(loaded: LoadedModel | ModelSet, source: Path, model: str | os.PathLike) -> None:
    """A model reads its own format's scans; input of another format is a one-line error naming both."""
    ours = loaded.format
    if not source.exists() or ours.holds_scans(source):
        return
    other = format_holding(source)
    if other is not None:
        raise DataError(
            f"{source}: model {model} was trained on {ours.title} and reads {ours.scans}, not {other.scans}"
        )


def case_totals(table: pd.DataFrame) -> pd.DataFrame:
    """Per case: slices, slices with tumour, tumour pixels (and per class and in ml for NIfTI)."""
    pixel_columns = [c for c in table.columns if c.endswith("_pixels") and c != "model_pixels"]
    cases = table.groupby("case", as_index=False).agg(
        slices=("slice", "size"),
        tumour_slices=("tumour_pixels", lambda s: int((s > 0).sum())),
        **{column: (column, "sum") for column in pixel_columns},
    )
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
    refs = loaded.format.find_scans(source)
    settings = inference_settings(loaded, inference)
    with staged_output(out_dir, overwrite, protected_files(loaded, refs)) as tmp:
        table = pd.DataFrame(predict_cases(loaded, refs, tmp, device, settings))
        # Plain writes: the staging folder already makes them appear whole or not at all.
        table.to_csv(tmp / "areas.csv", index=False)
        case_totals(table).to_csv(tmp / "cases.csv", index=False)
        record = {
            "source": str(source),
            "models": describe_models(loaded, tuple(names)),
            "inference": settings.model_dump(mode="json"),
        }
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return table
