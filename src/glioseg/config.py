"""Typed params: the one schema for params.yaml, with defaults, validation and one-line errors.

``dvc exp run -S lr=5e-5`` writes ``lr: 5e-05``, which YAML 1.1 loaders read as a *string*;
the schema coerces such numeric strings, so every stage sees proper floats.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from glioseg.errors import ConfigError
from glioseg.io import read_yaml

LossName = Literal["wbce", "dice", "combined"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticParams(Strict):
    patients: int = Field(10, ge=1)
    slices: int = Field(16, ge=4, description="slices per patient volume")
    size: int = Field(256, ge=32)
    seed: int = Field(0, ge=0)


BRATS_2020_LABELS = {0: 0, 1: 1, 2: 2, 4: 3}


class BratsParams(Strict):
    """How BraTS NIfTI cases (``<case>/<case>_<suffix>.nii.gz``) become slices and class labels."""

    modalities: tuple[str, ...] = Field(("t1ce", "flair"), min_length=1, description="input channels, in order")
    suffixes: dict[str, str] = Field(
        {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"},
        description="file-name suffix per modality and for the label volume ('seg'); BraTS 2023 "
        "names them t1n, t1c, t2w, t2f",
    )
    label_map: dict[int, int] = Field(
        BRATS_2020_LABELS,
        description="every label value of the files -> class index 0..C-1; a value not listed is an error",
    )
    class_names: tuple[str, ...] = ("background", "necrotic_core", "oedema", "enhancing")
    regions: dict[str, tuple[int, ...]] = Field(
        {"whole_tumour": (1, 2, 3), "tumour_core": (1, 3), "enhancing_tumour": (3,)},
        description="evaluation regions as sets of classes; their mean Dice is the headline",
    )
    slice_range: tuple[int, int] | None = Field(
        None, description="[first, stop) axial slices kept (seeds: [60, 135]); null keeps all"
    )
    percentiles: tuple[float, float] = Field(
        (0.5, 99.5), description="per-volume intensity window inside the brain, mapped to 0..255"
    )

    @model_validator(mode="after")
    def _consistent(self) -> BratsParams:
        missing = [name for name in (*self.modalities, "seg") if name not in self.suffixes]
        if missing:
            raise ValueError(f"no file suffix for {', '.join(missing)} in data.brats.suffixes")
        classes = sorted(set(self.label_map.values()))
        if classes != list(range(len(classes))) or len(classes) < 2:
            raise ValueError(f"label_map values must be the classes 0..C-1 (C >= 2), got {classes}")
        if len(self.class_names) != len(classes):
            raise ValueError(f"class_names has {len(self.class_names)} names for {len(classes)} classes")
        for name, members in self.regions.items():
            if not members or not set(members) <= set(range(1, len(classes))):
                raise ValueError(f"region '{name}' must list tumour classes 1..{len(classes) - 1}")
        if self.slice_range is not None and not 0 <= self.slice_range[0] < self.slice_range[1]:
            raise ValueError(f"slice_range must be [first, stop) with 0 <= first < stop, got {self.slice_range}")
        low, high = self.percentiles
        if not 0 <= low < high <= 100:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")
        return self

    @property
    def classes(self) -> int:
        return len(self.class_names)


class DataParams(Strict):
    source: str = Field(
        "synthetic",
        description="'synthetic', 'kaggle', or a path to a kaggle_3m folder, the Kaggle zip, "
        "or (dataset brats) a folder or zip of BraTS case folders",
    )
    patients: int | None = Field(None, ge=1, description="use only the first N patients (sorted)")
    synthetic: SyntheticParams = SyntheticParams()
    brats: BratsParams = BratsParams()


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
    image_size: int = Field(64, ge=32)
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
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16, 8)
    encoder_weights: str | None = None
    norm: Literal["batch", "group"] = Field(
        "batch", description="group: GroupNorm instead of BatchNorm (batch-independent; torchrun on CPU)"
    )
    in_channels: int | None = Field(None, ge=1, description="null: follows the dataset (LGG 3, BraTS modalities)")
    classes: int | None = Field(None, ge=1, description="null: follows the dataset (LGG 1 = sigmoid, BraTS C)")

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
    class_balance: bool = False


class TrainParams(Strict):
    """What a training run learns and keeps: tracked by train and sweep, part of the resume fingerprint."""

    amp: bool = Field(True, description="mixed precision: bf16 (fp16) autocast on CUDA; bf16 autocast for "
                      "training on CPUs with native bf16 (AVX512-BF16, AMX), fp32 elsewhere")
    clip_grad_norm: float | None = Field(
        None, gt=0, description="clip the gradient's global L2 norm to this before each step; null: no clipping"
    )
    keep: Literal["best_val", "last"] = Field(
        "best_val", description="the weights a run keeps: its epoch of best validation Dice, or its last "
        "epoch (the usual choice with a decaying schedule and a small validation set)"
    )
    compile: Literal["none", "default", "reduce-overhead", "max-autotune"] = Field(
        "none", description="torch.compile the training forward and backward with this mode; reduce-overhead "
        "(CUDA graphs) is for small batches on a GPU. Costs a compile of a minute or more per run"
    )
    schedule: Literal["constant", "cosine"] = Field(
        "constant", description="learning rate per optimiser step: constant lr, or cosine decay from lr to lr/100"
    )
    weight_map: WeightMapParams = WeightMapParams()


Postprocess = Literal["none", "largest_component"]


class InferenceParams(Strict):
    """How a trained model predicts: tracked by the evaluation stages only, carried by the model file as defaults."""

    threshold: float = Field(0.3, ge=0, le=1, description="sigmoid probability above which a pixel is tumour (LGG)")
    tta: bool = Field(False, description="predict as the mean over the four flips of each slice")
    postprocess: Postprocess = Field(
        "none", description="largest_component keeps only the largest connected tumour of each case"
    )


class RunParams(Strict):
    """How a run executes, not what it learns or predicts: tracked by no stage, never a reason to retrain."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 keeps torch's default")
    overlay_every: int = Field(5, ge=1, description="log validation overlays every N epochs")
    overlay_slices: int = Field(4, ge=1)


class SweepRun(Strict):
    """One configuration trained for the report's comparison tables; unset fields follow the top level."""

    loss: LossName | None = None
    lr: float | None = Field(None, gt=0)
    epochs: int | None = Field(None, ge=1)


Dataset = Literal["lgg", "brats"]
LGG_CHANNELS = 3


class Params(Strict):
    seed: int = Field(42, ge=0)
    dataset: Dataset = "lgg"
    lr: float = Field(1e-3, gt=0)
    loss: LossName = "combined"
    epochs: int = Field(16, ge=1)
    batch_size: int = Field(10, ge=1)
    data: DataParams = DataParams()
    clean: CleanParams = CleanParams()
    split: SplitParams = SplitParams()
    augment: AugmentParams = AugmentParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    inference: InferenceParams = InferenceParams()
    run: RunParams = RunParams()
    sweeps: dict[str, SweepRun] = {
        "wbce": SweepRun(loss="wbce"),
        "dice": SweepRun(loss="dice"),
        "lr_5e-4": SweepRun(loss="combined", lr=5e-4, epochs=22),
        "lr_5e-3": SweepRun(loss="combined", lr=5e-3),
    }

    @model_validator(mode="after")
    def _model_fits_dataset(self) -> Params:
        """Fill ``model.in_channels``/``classes`` from the dataset, or reject values that do not fit."""
        expected = {"in_channels": self.input_channels, "classes": self.output_channels}
        for key, value in expected.items():
            given = getattr(self.model, key)
            if given is not None and given != value:
                raise ValueError(f"model.{key} is {given} but dataset '{self.dataset}' needs {value}")
        object.__setattr__(self, "model", self.model.model_copy(update=expected))
        return self

    @property
    def input_channels(self) -> int:
        return LGG_CHANNELS if self.dataset == "lgg" else len(self.data.brats.modalities)

    @property
    def output_channels(self) -> int:
        """1 for LGG (a sigmoid tumour map); one softmax channel per class for BraTS."""
        return 1 if self.dataset == "lgg" else self.data.brats.classes

    def regions(self) -> dict[str, tuple[int, ...]]:
        """The evaluation regions (sets of class labels); LGG has the one region 'tumour'."""
        return {"tumour": (1,)} if self.dataset == "lgg" else dict(self.data.brats.regions)

    def data_card(self) -> dict[str, Any]:
        """What a checkpoint must carry to read and score new cases like the training data."""
        card: dict[str, Any] = {"dataset": self.dataset, "regions": {k: list(v) for k, v in self.regions().items()}}
        if self.dataset == "brats":
            card["brats"] = self.data.brats.model_dump(mode="json")
        return card

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
    key = ".".join(str(part) for part in error["loc"])
    if not key:
        return error["msg"].removeprefix("Value error, ")
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
