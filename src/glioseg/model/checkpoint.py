"""The smp U-Net factory and checkpoint files that carry everything predict needs.

A checkpoint holds only tensors and plain data (state dict, model params, the serialized
albumentations pipelines, the inference settings of its training run, the data card: dataset, evaluation regions and the
format's settings for reading cases), so it loads with ``torch.load(weights_only=True)``:
no unpickling of arbitrary objects from user files.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from glioseg.config.numerics import TRAINING_NUMERICS, recorded_numerics
from glioseg.config.sections import InferenceParams, ModelParams
from glioseg.errors import DataError
from glioseg.formats import FORMATS
from glioseg.formats.base import TUMOUR_REGIONS, DataCard, DataFormat
from glioseg.io import atomic_path
from glioseg.model.network import build_model


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Serialised in memory first: torch's own file writer reports a full disk as a RuntimeError,
    a plain write as the OSError that :func:`atomic_path` turns into one line."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: model file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise DataError(f"{path}: not a glioseg checkpoint ({type(exc).__name__})") from None


OLDEST_CARD = DataCard("lgg", dict(TUMOUR_REGIONS))  # model files from before the data card were all LGG


@dataclass
class LoadedModel:
    model: torch.nn.Module
    params: ModelParams
    pipelines: dict[str, Any]
    inference: InferenceParams  # the training run's settings: defaults for predict and the viewer
    meta: dict[str, Any]
    card: DataCard

    @property
    def dataset(self) -> str:
        return self.card.dataset

    @property
    def format(self) -> DataFormat[Any]:
        """The data format of the training data: how new cases are found, read and written back."""
        return FORMATS[self.card.dataset]

    @property
    def format_settings(self) -> Any:
        """The format's settings the model was trained with (BraTS: modalities, suffixes, label map)."""
        return self.format.card_settings(self.card)

    @property
    def regions(self) -> dict[str, tuple[int, ...]]:
        return dict(self.card.regions)

    @property
    def classes(self) -> int:
        classes = self.params.classes
        assert classes is not None  # a trained model's params have it filled from its dataset
        return int(classes)

    @property
    def context(self) -> int:
        """Neighbouring slices on each side stacked as extra channels (``data.context``; 0: 2-D)."""
        return self.card.context

    @property
    def window(self) -> tuple[float, float] | None:
        """The per-patient intensity window's percentiles (``data.window``); None: slices as stored."""
        return self.card.window


@dataclass(frozen=True)
class ModelSet:
    """Models whose probabilities are averaged at inference (a fold ensemble, as nnU-Net's default).

    The members must read cases alike (dataset, regions, classes, input channels and context,
    preprocessing); each keeps its own normalisation, since each fold computed its statistics on
    its own training patients. The first member's inference settings are the set's defaults.
    ``names`` are the specs the members were loaded from, recorded with every prediction.
    """

    members: tuple[LoadedModel, ...]
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.members) < 2 or len(self.members) != len(self.names):
            raise ValueError("a model set needs at least two models, one name each")
        first = self.members[0]
        for loaded, name in zip(self.members[1:], self.names[1:]):
            for what, ours, theirs in (
                (
                    "data card (dataset, regions, context, intensity window, how cases are read)",
                    loaded.card,
                    first.card,
                ),
                ("input channels", loaded.params.in_channels, first.params.in_channels),
                ("classes", loaded.classes, first.classes),
                ("preprocessing (image size)", loaded.pipelines.get("preprocess"), first.pipelines.get("preprocess")),
            ):
                if ours != theirs:
                    raise DataError(
                        f"{name}: its {what} differs from {self.names[0]}'s; an ensemble's models "
                        "must read cases the same way"
                    )

    @property
    def first(self) -> LoadedModel:
        return self.members[0]

    params = property(lambda self: self.first.params)
    pipelines = property(lambda self: self.first.pipelines)
    inference = property(lambda self: self.first.inference)
    card = property(lambda self: self.first.card)
    dataset = property(lambda self: self.first.dataset)
    format = property(lambda self: self.first.format)
    format_settings = property(lambda self: self.first.format_settings)
    regions = property(lambda self: self.first.regions)
    classes = property(lambda self: self.first.classes)
    context = property(lambda self: self.first.context)
    window = property(lambda self: self.first.window)

    @property
    def meta(self) -> dict[str, Any]:
        """No single MLflow run: an ensemble's results are not logged to any member's run."""
        members = [recorded_numerics(m.meta) for m in self.members]
        return {
            "ensemble": list(self.names),
            **{key: ",".join(sorted({numerics[key] for numerics in members})) for key in TRAINING_NUMERICS},
        }


def describe_models(loaded: LoadedModel | ModelSet, names: tuple[str, ...]) -> list[dict[str, Any]]:
    """What a prediction records about the model(s) it came from: spec, MLflow run, training precision and kernels."""
    members = loaded.members if isinstance(loaded, ModelSet) else (loaded,)
    return [
        {"model": name, "mlflow_run_id": m.meta.get("mlflow_run_id"), **recorded_numerics(m.meta)}
        for m, name in zip(members, names)
    ]


def model_payload(
    model: torch.nn.Module, params: ModelParams, pipelines: dict, inference: InferenceParams, card: DataCard, **meta
) -> dict:
    return {
        # A copy: on the CPU .cpu() returns the live tensor, and a best-epoch payload would follow training.
        "state_dict": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
        "model_params": params.model_dump(),
        "pipelines": pipelines,
        "inference": inference.model_dump(mode="json"),
        "data_card": card.to_json(),
        "meta": meta,
    }


def stored_inference(payload: dict[str, Any]) -> InferenceParams:
    """The model file's inference settings; files from before the ``inference`` group keep them at the top level."""
    stored = payload.get("inference") or {k: payload[k] for k in InferenceParams.model_fields if k in payload}
    return InferenceParams.model_validate(stored)


def load_model(path: str | os.PathLike) -> LoadedModel:
    payload = read_checkpoint(path)
    if not isinstance(payload, dict):  # weights_only still loads any plain data: a list, a bare tensor
        raise DataError(f"{path}: not a glioseg model file (it holds a {type(payload).__name__}, not a checkpoint)")
    try:
        params = ModelParams.model_validate(payload["model_params"])
        inference = stored_inference(payload)
        model = build_model(params)
        model.load_state_dict(payload["state_dict"])
    except (KeyError, ValidationError, RuntimeError) as exc:
        raise DataError(f"{path}: checkpoint does not match a glioseg U-Net ({type(exc).__name__})") from None
    model.eval()
    card = payload.get("data_card")
    try:
        data_card = OLDEST_CARD if card is None else DataCard.from_json(card)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(f"{path}: its data card is damaged ({type(exc).__name__}: {exc})") from None
    if data_card.dataset not in FORMATS:
        raise DataError(
            f"{path}: trained on data format '{data_card.dataset}', which this glioseg does not know "
            f"(known: {', '.join(FORMATS)})"
        )
    return LoadedModel(model, params, payload["pipelines"], inference, payload.get("meta", {}), data_card)
