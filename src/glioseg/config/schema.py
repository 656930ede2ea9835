"""Typed params: the one schema for params.yaml, with defaults, validation and one-line errors.

``dvc exp run -S lr=5e-5`` writes ``lr: 5e-05``, which YAML 1.1 loaders read as a *string*;
the schema coerces such numeric strings, so every stage sees proper floats.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from glioseg.errors import ConfigError
from glioseg.io import read_yaml

LossName = Literal["wbce", "dice", "combined"]


def _numeric(annotation: Any) -> bool:
    """Whether a field holds a number (``int``, ``float``, or one of them or None)."""
    options = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    return bool(options) and all(option in (int, float, type(None)) for option in options) \
        and any(option in (int, float) for option in options)


class Strict(BaseModel):
    """Unknown keys, infinities and NaN are errors, and a number is never given as true/false.

    YAML reads ``epochs: true`` as a boolean, which pydantic would take as 1; ``lr: .inf`` as a
    float that would train to a NaN loss.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and _numeric(cls.model_fields[info.field_name].annotation):
            raise ValueError("expected a number, not true/false")
        return value


class SyntheticParams(Strict):
    patients: int = Field(40, ge=1, description="patients: 40 give a test split of 8, one of them tumour-free")
    slices: int = Field(8, ge=4, description="slices per patient volume")
    size: int = Field(128, ge=32, description="px of each slice (the model sees augment.image_size)")
    seed: int = Field(0, ge=0)


BRATS_2020_LABELS = {0: 0, 1: 1, 2: 2, 4: 3}


def check_percentiles(percentiles: tuple[float, float]) -> tuple[float, float]:
    low, high = percentiles
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {list(percentiles)}")
    return percentiles


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

    @field_validator("percentiles")
    @classmethod
    def _percentiles_in_order(cls, value: tuple[float, float]) -> tuple[float, float]:
        return check_percentiles(value)

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
    context: int = Field(0, ge=0, le=8, description="2.5-D input: the N slices above and below each slice "
                         "as extra channels (the volume's ends repeat the nearest slice); 0: each slice alone")
    window: tuple[float, float] | None = Field(
        None, description="LGG: each channel of a patient's slices windowed between these two percentiles of "
        "its own pixels and mapped to 0..255, so every patient's intensities share one scale; null: as stored")
    synthetic: SyntheticParams = SyntheticParams()
    brats: BratsParams = BratsParams()

    @field_validator("window")
    @classmethod
    def _window_is_percentiles(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        return None if value is None else check_percentiles(value)


class CleanParams(Strict):
    min_mean_intensity: float = Field(
        2.0, ge=0, le=255, description="slices whose mean intensity (0-255) is below this are dark"
    )


class SplitParams(Strict):
    by: Literal["patient", "site", "slice"] = Field(
        "patient", description="patient: a patient-level split (or k folds); site: leave one acquiring site "
        "out (kaggle_3m ids TCGA_<site>_..., split.fold picks the site); slice: the seeds' leaky protocol")
    train: float = Field(0.72, gt=0, lt=1)
    val: float = Field(0.08, ge=0, lt=1)
    test: float = Field(0.20, gt=0, lt=1)
    folds: int = Field(0, ge=0, description="k-fold cross-validation by patient when >= 2")
    fold: int = Field(0, ge=0, description="which fold (or, with by: site, which site in sorted order) is the test set")
    fold_is: Literal["test", "val"] = Field(
        "test", description="with split.folds: what the chosen fold becomes: test (cross-validation, every patient "
        "tested once) or val (the test split stays as without folds and the other patients are dealt into the "
        "folds: fold models for an ensemble, as nnU-Net trains them)")

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
        if self.fold_is == "val" and not self.folds:
            raise ValueError("split.fold_is: val needs split.folds (the number of folds)")
        return self


class AugmentParams(Strict):
    image_size: int = Field(64, ge=32)
    enabled: bool = True
    hflip: float = Field(0.5, ge=0, le=1)
    vflip: float = Field(0.5, ge=0, le=1)
    rotate90: float = Field(0.5, ge=0, le=1)
    crop: int | None = Field(
        None, ge=32, description="train on random square crops of this size; validation and inference see whole slices"
    )
    brightness_contrast: float = Field(0.0, ge=0, le=1, description="probability of A.RandomBrightnessContrast")
    brightness_limit: float = Field(0.2, ge=0, le=1, description="brightness shift of up to +- this x 255")
    contrast_limit: float = Field(0.2, ge=0, le=1, description="contrast factor 1 +- up to this")
    affine: float = Field(0.0, ge=0, le=1, description="probability of A.Affine: a random rotation and zoom")
    rotate_limit: float = Field(15.0, ge=0, le=180, description="rotation of up to +- this many degrees")
    scale_limit: float = Field(0.1, ge=0, lt=1, description="zoom factor 1 +- up to this")

    @field_validator("image_size", "crop")
    @classmethod
    def _divisible_by_32(cls, value: int | None) -> int | None:
        if value is not None and value % 32:
            raise ValueError(f"must be divisible by 32 (the U-Net downsamples 5 times), got {value}")
        return value

    @model_validator(mode="after")
    def _crop_fits(self) -> AugmentParams:
        if self.crop is not None and self.crop > self.image_size:
            raise ValueError(f"augment.crop ({self.crop}) is larger than augment.image_size ({self.image_size})")
        return self


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
    ema: float | None = Field(
        None, gt=0, lt=1, description="decay per optimiser step of an exponential moving average of the weights "
        "and batch-norm statistics, which validation, the kept epoch and the model file use; null: the raw weights"
    )
    keep: Literal["best_val", "last"] = Field(
        "last", description="the weights a run keeps: its epoch of best validation Dice, or its last "
        "epoch (the usual choice with a decaying schedule and a small validation set)"
    )
    compile: Literal["none", "default", "reduce-overhead", "max-autotune"] = Field(
        "none", description="torch.compile the training forward and backward with this mode; reduce-overhead "
        "(CUDA graphs) is for small batches on a GPU. Costs a compile of a minute or more per run"
    )
    schedule: Literal["constant", "cosine"] = Field(
        "cosine", description="learning rate per optimiser step: constant lr, or cosine decay from lr to lr/100"
    )
    batch_dice: bool = Field(
        False, description="the Dice loss term as one Dice over all the batch's pixels (nnU-Net's batch_dice) "
        "instead of the mean of each image's Dice"
    )
    empty_slices: float = Field(
        1.0, ge=0, le=1, description="share of the training slices without foreground drawn afresh each epoch; "
        "every slice with foreground is always drawn. 1: every slice, every epoch"
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
LGG_REGIONS: dict[str, tuple[int, ...]] = {"tumour": (1,)}  # LGG's one evaluation region


class Params(Strict):
    seed: int = Field(42, ge=0)
    dataset: Dataset = "lgg"
    lr: float = Field(1e-3, gt=0)
    loss: LossName = "combined"
    epochs: int = Field(24, ge=1)
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
        "lr_5e-4": SweepRun(loss="combined", lr=5e-4, epochs=34),
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
        if self.data.window is not None and self.dataset == "brats":
            raise ValueError("data.window applies to LGG slices; BraTS volumes are always windowed, by "
                             "data.brats.percentiles")
        if self.split.by == "site" and self.dataset == "brats":
            raise ValueError("split.by: site needs kaggle_3m patient ids (TCGA_<site>_<id>_<date>); BraTS case "
                             "names carry no acquiring site, so dataset brats splits by patient")
        return self

    @property
    def slice_channels(self) -> int:
        """Channels of one slice: LGG's three sequences or the BraTS modalities."""
        return LGG_CHANNELS if self.dataset == "lgg" else len(self.data.brats.modalities)

    @property
    def input_channels(self) -> int:
        """The model's input: a slice's channels for itself and each context neighbour."""
        return self.slice_channels * (2 * self.data.context + 1)

    @property
    def output_channels(self) -> int:
        """1 for LGG (a sigmoid tumour map); one softmax channel per class for BraTS."""
        return 1 if self.dataset == "lgg" else self.data.brats.classes

    def regions(self) -> dict[str, tuple[int, ...]]:
        """The evaluation regions (sets of class labels); LGG has the one region 'tumour'."""
        return dict(LGG_REGIONS) if self.dataset == "lgg" else dict(self.data.brats.regions)

    def data_card(self) -> dict[str, Any]:
        """What a checkpoint must carry to read and score new cases like the training data."""
        card: dict[str, Any] = {"dataset": self.dataset, "regions": {k: list(v) for k, v in self.regions().items()},
                                "context": self.data.context}
        if self.data.window is not None:
            card["window"] = list(self.data.window)
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
