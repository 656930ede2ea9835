"""Typed params: the one schema for params.yaml, with defaults, validation and one-line errors.

``dvc exp run -S lr=5e-5`` writes ``lr: 5e-05``, which YAML 1.1 loaders read as a *string*;
the schema coerces such numeric strings, so every stage sees proper floats.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from glioseg.config.sections import (
    AugmentParams,
    CleanParams,
    DataParams,
    InferenceParams,
    LossName,
    ModelParams,
    RunParams,
    SplitParams,
    Strict,
    SweepRun,
    TrainParams,
    _section_field,
)
from glioseg.errors import ConfigError
from glioseg.formats import FORMATS, get_format
from glioseg.formats.base import DataCard, DataFormat
from glioseg.io import read_yaml


class Params(Strict):
    """glioseg params, validated by the schema: an unknown key or a wrong type stops a stage with one line.

    The defaults are the CPU profile for the embedded synthetic data: `dvc repro` runs in minutes on 2 cores.
    With about 30x fewer optimiser steps than the seed protocol, their learning rates are the seed's x10
    (1e-4 -> 1e-3), decayed by a cosine schedule to the last epoch, which is kept (a validation split of 3
    patients is too small to pick an epoch by). profiles/ hold other configurations as their differences from
    the defaults; profiles/seed-gpu.yaml is the seed-004 protocol itself (128 px, lr 1e-4, 50 epochs) for a GPU.
    """

    seed: int = Field(
        42, ge=0, description="seed of the split, the initial weights, the batch order and the augmentation"
    )
    dataset: str = Field(
        "lgg",
        description="the data format (glioseg.formats): "
        + ", ".join(f"{name} ({data_format.title} {data_format.scans})" for name, data_format in FORMATS.items())
        + "; dvc exp run -S dataset=brats",
    )
    lr: float = Field(1e-3, gt=0, description="Adam's learning rate (where train.schedule starts)")
    loss: LossName = Field(
        "combined", description="wbce (weighted cross-entropy, train.weight_map), dice, or combined (their sum)"
    )
    epochs: int = Field(24, ge=1, description="training epochs")
    batch_size: int = Field(10, ge=1, description="training slices per optimiser step")
    data: DataParams = _section_field(DataParams)
    clean: CleanParams = _section_field(CleanParams)
    split: SplitParams = _section_field(SplitParams)
    augment: AugmentParams = _section_field(AugmentParams)
    model: ModelParams = _section_field(ModelParams)
    train: TrainParams = _section_field(TrainParams)
    inference: InferenceParams = _section_field(InferenceParams)
    run: RunParams = _section_field(RunParams)
    sweeps: dict[str, SweepRun] = Field(
        {
            "wbce": SweepRun(loss="wbce"),
            "dice": SweepRun(loss="dice"),
            "lr_5e-4": SweepRun(loss="combined", lr=5e-4, epochs=34),
            "lr_5e-3": SweepRun(loss="combined", lr=5e-3),
        },
        description="Extra configurations trained for the report's tables, by name (unset keys follow the top "
        "level). Loss table: every loss at the top-level lr and epochs (combined = the main run). Learning-rate "
        "table, combined loss, the seed's rows scaled as the defaults are: (lr/2, 70/50 x epochs), (lr, epochs) = "
        "the main run, (5 x lr, epochs).",
    )

    @field_validator("dataset")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in FORMATS:
            raise ValueError(f"unknown data format (known: {', '.join(FORMATS)})")
        return value

    @model_validator(mode="after")
    def _model_fits_dataset(self) -> Params:
        """Fill ``model.in_channels``/``classes`` from the dataset, or reject values that do not fit."""
        expected = {"in_channels": self.input_channels, "classes": self.output_channels}
        for key, value in expected.items():
            given = getattr(self.model, key)
            if given is not None and given != value:
                raise ValueError(f"model.{key} is {given} but dataset '{self.dataset}' needs {value}")
        object.__setattr__(self, "model", self.model.model_copy(update=expected))
        conflict = self.format.param_conflict(self.data.window is not None, self.split.by == "site")
        if conflict is not None:
            raise ValueError(conflict)
        return self

    @property
    def format(self) -> DataFormat[Any]:
        """The data format of ``dataset`` (:mod:`glioseg.formats`)."""
        return get_format(self.dataset)

    @property
    def format_settings(self) -> Any:
        """The format's own settings, ``data.<dataset>`` (None for a format without any)."""
        return getattr(self.data, self.dataset, None)

    @property
    def slice_channels(self) -> int:
        """Channels of one slice (LGG's three sequences, the BraTS modalities)."""
        return self.format.slice_channels(self.format_settings)

    @property
    def input_channels(self) -> int:
        """The model's input: a slice's channels for itself and each context neighbour."""
        return self.slice_channels * (2 * self.data.context + 1)

    @property
    def output_channels(self) -> int:
        """1 for a binary format (a sigmoid tumour map, LGG); one softmax channel per class otherwise."""
        return self.format.output_channels(self.format_settings)

    def regions(self) -> dict[str, tuple[int, ...]]:
        """The evaluation regions (sets of class labels); LGG has the one region 'tumour'."""
        return self.format.regions(self.format_settings)

    def class_names(self) -> tuple[str, ...]:
        """A name per class label of a multi-class format (BraTS), background first; () for a binary one."""
        return self.format.class_names(self.format_settings)

    def data_card(self) -> DataCard:
        """What a checkpoint must carry to read and score new cases like the training data."""
        return self.format.card(self.format_settings, self.data.context, self.data.window)

    def for_sweep(self, name: str) -> Params:
        """These params with the overrides of sweep ``name`` applied."""
        if name not in self.sweeps:
            raise ConfigError(f"params.yaml: unknown sweep 'sweeps.{name}' (known: {', '.join(self.sweeps)})")
        overrides = {k: v for k, v in self.sweeps[name].model_dump().items() if v is not None}
        return self.model_copy(update=overrides)

    def training(self) -> dict[str, Any]:
        """The params that change what a run learns (all but inference, run and the sweeps' definitions)."""
        return self.model_dump(mode="json", exclude={"inference", "run", "sweeps"})

    def flat(self) -> dict[str, Any]:
        """Dotted-key view of a training run's params, as MLflow params want them.

        The inference settings are left out: evaluation may use others than the run was trained
        with, and records those it used as tags of the run (MLflow params cannot change).
        """
        return flatten(self.model_dump(exclude={"inference", "sweeps"}))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _describe(error: Mapping[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"])
    if not key:
        return error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    message = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"key '{key}': {message}{shown}"


def _validate(raw: dict[str, Any] | None, blame: Callable[[tuple], str]) -> Params:
    """Validate, or raise the first error as one line prefixed by ``blame(error location)``."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as exc:
        error = exc.errors()[0]
        raise ConfigError(f"{blame(error['loc'])}: {_describe(error)}") from None


def parse_params(raw: dict[str, Any] | None, source: str = "params.yaml") -> Params:
    return _validate(raw, lambda _: source)


def params_path() -> Path:
    """params.yaml of the repository the stage runs in (DVC runs stages from the repo root)."""
    return Path(os.environ.get("GLIOSEG_PARAMS", "params.yaml"))


def load_params(path: str | os.PathLike | None = None) -> Params:
    path = Path(path) if path is not None else params_path()
    raw = read_yaml(path, "params file")
    if raw is None:
        raise ConfigError(f"{path}: empty; it must hold the params (`glioseg params --out {path}` writes the defaults)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of params at the top level")
    return parse_params(raw, str(path))
