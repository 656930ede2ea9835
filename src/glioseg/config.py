"""Typed params: the one schema for params.yaml, with defaults, validation and one-line errors.

``dvc exp run -S lr=5e-5`` writes ``lr: 5e-05``, which YAML 1.1 loaders read as a *string*;
the schema coerces such numeric strings, so every stage sees proper floats.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from glioseg.errors import ConfigError
from glioseg.io import read_yaml

LossName = Literal["wbce", "dice", "combined"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticParams(Strict):
    patients: int = Field(10, ge=1)
    slices: int = Field(20, ge=4, description="slices per patient volume")
    size: int = Field(256, ge=32)
    seed: int = Field(0, ge=0)


class DataParams(Strict):
    dataset: Literal["lgg"] = "lgg"
    source: str = Field(
        "synthetic",
        description="'synthetic', 'kaggle', or a path to a kaggle_3m folder or the Kaggle zip",
    )
    patients: int | None = Field(None, ge=1, description="use only the first N patients (sorted)")
    synthetic: SyntheticParams = SyntheticParams()


class CleanParams(Strict):
    min_mean_intensity: float = Field(
        2.0, ge=0, le=255, description="slices whose mean intensity (0-255) is below this are dark"
    )


class SplitParams(Strict):
    by: Literal["patient", "slice"] = "patient"
    train: float = Field(0.72, gt=0, lt=1)
    val: float = Field(0.08, ge=0, lt=1)
    test: float = Field(0.20, gt=0, lt=1)
    folds: int = Field(0, ge=0, description="k-fold cross-validation by patient when >= 2")
    fold: int = Field(0, ge=0, description="which fold is the test set")

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> SplitParams:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split.train + split.val + split.test must be 1, got {total:g}")
        if self.folds == 1:
            raise ValueError("split.folds must be 0 (no cross-validation) or at least 2")
        if self.folds and self.fold >= self.folds:
            raise ValueError(f"split.fold must be below split.folds ({self.folds}), got {self.fold}")
        if self.folds and self.by != "patient":
            raise ValueError("split.folds needs split.by: patient")
        return self


class AugmentParams(Strict):
    image_size: int = Field(128, ge=32)
    enabled: bool = True
    hflip: float = Field(0.5, ge=0, le=1)
    vflip: float = Field(0.5, ge=0, le=1)
    rotate90: float = Field(0.5, ge=0, le=1)

    @field_validator("image_size")
    @classmethod
    def _divisible_by_32(cls, value: int) -> int:
        if value % 32:
            raise ValueError(f"must be divisible by 32 (the U-Net downsamples 5 times), got {value}")
        return value


class ModelParams(Strict):
    encoder: str = "resnet18"
    encoder_depth: int = Field(5, ge=3, le=5)
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    encoder_weights: str | None = None
    in_channels: int = Field(3, ge=1)
    classes: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _decoder_matches_depth(self) -> ModelParams:
        if len(self.decoder_channels) != self.encoder_depth:
            raise ValueError(
                f"model.decoder_channels has {len(self.decoder_channels)} entries but "
                f"model.encoder_depth is {self.encoder_depth}; they must match"
            )
        return self


class WeightMapParams(Strict):
    w0: float = Field(10.0, ge=0)
    sigma: float = Field(5.0, gt=0)
    class_balance: bool = True


class TrainParams(Strict):
    threshold: float = Field(0.3, ge=0, le=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    weight_map: WeightMapParams = WeightMapParams()
    overlay_every: int = Field(10, ge=1, description="log validation overlays every N epochs")
    overlay_slices: int = Field(4, ge=1)
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 keeps torch's default")


class SweepRun(Strict):
    """One configuration trained for the report's comparison tables; unset fields follow the top level."""

    loss: LossName | None = None
    lr: float | None = Field(None, gt=0)
    epochs: int | None = Field(None, ge=1)


class Params(Strict):
    seed: int = Field(42, ge=0)
    lr: float = Field(1e-4, gt=0)
    loss: LossName = "combined"
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(10, ge=1)
    data: DataParams = DataParams()
    clean: CleanParams = CleanParams()
    split: SplitParams = SplitParams()
    augment: AugmentParams = AugmentParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    sweeps: dict[str, SweepRun] = {}

    def for_sweep(self, name: str) -> Params:
        """These params with the overrides of sweep ``name`` applied."""
        if name not in self.sweeps:
            raise ConfigError(f"params.yaml: unknown sweep 'sweeps.{name}' (known: {', '.join(self.sweeps)})")
        overrides = {k: v for k, v in self.sweeps[name].model_dump().items() if v is not None}
        return self.model_copy(update=overrides)

    def flat(self) -> dict[str, Any]:
        """Dotted-key view, as MLflow params want them."""
        return flatten(self.model_dump(exclude={"sweeps"}))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _describe(error: dict) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    message = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"key '{key}': {message}{shown}"


def parse_params(raw: dict[str, Any] | None, source: str = "params.yaml") -> Params:
    try:
        return Params.model_validate(raw or {})
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc.errors()[0])}") from None


def params_path() -> Path:
    """params.yaml of the repository the stage runs in (DVC runs stages from the repo root)."""
    return Path(os.environ.get("GLIOSEG_PARAMS", "params.yaml"))


def load_params(path: str | os.PathLike | None = None) -> Params:
    path = Path(path) if path is not None else params_path()
    raw = read_yaml(path, "params file")
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of params at the top level")
    return parse_params(raw, str(path))
