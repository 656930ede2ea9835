"""The sections of params.yaml: one strict model per group of params, each field with its one description."""

from __future__ import annotations

import inspect
from typing import Any, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from glioseg.formats.brats import BratsParams
from glioseg.formats.intensity import check_percentiles
from glioseg.strict import Strict

LossName = Literal["wbce", "dice", "combined"]
DeviceName = Literal["auto", "cpu", "cuda"]  # the torch devices glioseg.device selects from


def _section_field(model: type[Strict]) -> Any:
    """A section field: the section's defaults, described by its class docstring (the one place it is said)."""
    return Field(model(), description=inspect.cleandoc(model.__doc__ or ""))


class SyntheticParams(Strict):
    """The generated data of `data.source: synthetic` (LGG slices, or BraTS volumes for `dataset: brats`), so
    the pipeline runs without a download."""

    patients: int = Field(
        40, ge=1, description="patients generated; the default 40 give a test split of 8, one of them tumour-free"
    )
    slices: int = Field(8, ge=4, description="axial slices per patient volume")
    size: int = Field(128, ge=32, description="px of each square slice (the model sees augment.image_size)")
    seed: int = Field(0, ge=0, description="seed of the generator: the same seed, the same data")


class DataParams(Strict):
    """Where the data come from and how a patient's slices become the model's input."""

    source: str = Field(
        "synthetic",
        description="synthetic (generated), kaggle (the Kaggle API), or a path: a kaggle_3m folder or the "
        "Kaggle zip (lgg-mri-segmentation.zip); for dataset brats a folder or zip of BraTS case folders",
    )
    patients: int | None = Field(None, ge=1, description="only the first N patients (sorted by name); null: all")
    context: int = Field(
        0,
        ge=0,
        le=8,
        description="2.5-D input: the N slices above and below each slice "
        "as extra channels (the volume's ends repeat the nearest slice); 0: each slice alone",
    )
    window: tuple[float, float] | None = Field(
        None,
        description="LGG: each channel of a patient's slices windowed between these [low, high] "
        "percentiles of its own pixels and mapped to 0..255, so every patient's intensities share one scale; "
        "null: as stored",
    )
    synthetic: SyntheticParams = _section_field(SyntheticParams)
    brats: BratsParams = _section_field(BratsParams)

    @field_validator("window")
    @classmethod
    def _window_is_percentiles(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        return None if value is None else check_percentiles(value)


class CleanParams(Strict):
    """Which slices the clean stage removes."""

    min_mean_intensity: float = Field(
        2.0,
        ge=0,
        le=255,
        description="slices whose mean intensity (over pixels, 0..255) is below this are dark and removed",
    )


class SplitParams(Strict):
    """How the patients are dealt into the train, val and test splits."""

    by: Literal["patient", "site", "slice"] = Field(
        "patient",
        description="patient: a patient-level split (or k folds); site: leave one acquiring site "
        "out (kaggle_3m ids `TCGA_<site>_...`, split.fold picks the site); slice: the seeds' protocol, which leaks "
        "a patient's slices across the splits",
    )
    train: float = Field(0.72, gt=0, lt=1, description="share of the patients (slices with by: slice) trained on")
    val: float = Field(0.08, ge=0, lt=1, description="share for validation during training")
    test: float = Field(0.20, gt=0, lt=1, description="share for the test; train + val + test = 1")
    folds: int = Field(0, ge=0, description="k-fold cross-validation by patient when >= 2; 0: none")
    fold: int = Field(
        0, ge=0, description="which fold (0..folds-1; with by: site, which site in sorted order) is the test set"
    )
    fold_is: Literal["test", "val"] = Field(
        "test",
        description="with split.folds: what the chosen fold becomes: test (cross-validation, every patient "
        "tested once) or val (the test split stays as without folds and the other patients are dealt into the "
        "folds: fold models for an ensemble, as nnU-Net trains them)",
    )

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
    """The slices' size and the training slices' random augmentation (albumentations' steps, run on whole
    batches on the training device)."""

    image_size: int = Field(
        64,
        ge=32,
        description="px of the square slices the model sees (resized once, by the cache stage); divisible by 32",
    )
    enabled: bool = Field(
        True, description="false: no random augmentation at all (crop and brightness/contrast included)"
    )
    hflip: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip per slice")
    vflip: float = Field(0.5, ge=0, le=1, description="probability of a vertical flip per slice")
    rotate90: float = Field(0.5, ge=0, le=1, description="probability of a random quarter turn per slice")
    crop: int | None = Field(
        None,
        ge=32,
        description="train on random square crops of this size (px, divisible by 32); validation and "
        "inference see whole slices; null: whole slices",
    )
    brightness_contrast: float = Field(
        0.0,
        ge=0,
        le=1,
        description="probability of a random brightness shift and "
        "contrast factor per slice (A.RandomBrightnessContrast)",
    )
    brightness_limit: float = Field(0.2, ge=0, le=1, description="brightness shift of up to +- this x 255")
    contrast_limit: float = Field(0.2, ge=0, le=1, description="contrast factor 1 +- up to this")
    affine: float = Field(
        0.0, ge=0, le=1, description="probability of a random rotation and zoom about the centre per slice (A.Affine)"
    )
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
    """The network: a segmentation_models_pytorch U-Net."""

    encoder: str = Field("resnet18", description="the U-Net's encoder, by its segmentation_models_pytorch name")
    encoder_depth: int = Field(5, ge=3, le=5, description="encoder stages; decoder_channels has one entry per stage")
    decoder_channels: tuple[int, ...] = Field((128, 64, 32, 16, 8), description="channels of each decoder stage")
    encoder_weights: str | None = Field(
        None,
        description="pretrained encoder weights by their "
        "segmentation_models_pytorch name (imagenet: downloaded); null: random",
    )
    norm: Literal["batch", "group"] = Field(
        "batch", description="batch: BatchNorm; group: GroupNorm (batch-independent, for torchrun on CPU)"
    )
    in_channels: int | None = Field(
        None,
        ge=1,
        description="input channels; null: follows the dataset (LGG 3, "
        "BraTS its modalities, each x (2 data.context + 1))",
    )
    classes: int | None = Field(
        None,
        ge=1,
        description="output channels; null: follows the dataset (LGG 1 = sigmoid, BraTS its classes = softmax)",
    )

    @model_validator(mode="after")
    def _decoder_matches_depth(self) -> ModelParams:
        if len(self.decoder_channels) != self.encoder_depth:
            raise ValueError(
                f"model.decoder_channels has {len(self.decoder_channels)} entries but "
                f"model.encoder_depth is {self.encoder_depth}; they must match"
            )
        return self


class WeightMapParams(Strict):
    """The wbce loss's pixel weights (Ronneberger et al. 2015, eq. 2): w(x) = w_c(x) + w0 exp(-(d1 + d2)^2 /
    (2 sigma^2)), d1 and d2 the distances to the nearest and second-nearest tumour region."""

    w0: float = Field(
        10.0,
        ge=0,
        description="weight of the border term, which stresses the background gaps between neighbouring tumour regions",
    )
    sigma: float = Field(5.0, gt=0, description="px width of the border term")
    class_balance: bool = Field(
        False,
        description="inverse-frequency class weights w_c (tumour pixels weigh "
        "~1/(2p), p ~ 1-2%); false: w_c = 1. They push the sigmoid far up: on real LGG "
        "(CPU profile) precision fell to 0.13 at threshold 0.3, so the default is off; "
        "profiles/seed-gpu.yaml keeps them on, as seed 004 did",
    )


class TrainParams(Strict):
    """Training: what a run learns and keeps (tracked by train and sweep_train, part of the resume fingerprint)."""

    amp: bool = Field(
        True,
        description="mixed precision: bf16 (fp16 where bf16 is missing) autocast on CUDA; "
        "bf16 for training on CPUs with native bf16 (AVX512-BF16, AMX); fp32 elsewhere",
    )
    schedule: Literal["constant", "cosine"] = Field(
        "cosine", description="learning rate per optimiser step: constant lr, or cosine decay from lr to lr/100"
    )
    compile: Literal["none", "default", "reduce-overhead", "max-autotune"] = Field(
        "none",
        description="torch.compile the training step in this mode (none: not compiled); default, "
        "reduce-overhead (CUDA graphs, for small batches on a GPU) or max-autotune; a compile costs a minute or "
        "more per run",
    )
    clip_grad_norm: float | None = Field(
        None, gt=0, description="clip the gradient's global L2 norm to this before each step; null: no clipping"
    )
    ema: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="decay per optimiser step of a moving average of the weights and batch-norm "
        "statistics, which validation, the kept epoch and the model file use; null: the raw weights",
    )
    keep: Literal["best_val", "last"] = Field(
        "last",
        description="the epoch whose weights the run keeps: best_val (best validation Dice) or last "
        "(the usual choice with a decaying schedule and a small validation set)",
    )
    batch_dice: bool = Field(
        False,
        description="the Dice loss over all the batch's pixels (nnU-Net's batch_dice) instead of the mean "
        "of each slice's Dice",
    )
    empty_slices: float = Field(
        1.0,
        ge=0,
        le=1,
        description="share of the tumour-free training slices drawn afresh each epoch (every "
        "slice with tumour always is); 1: every slice, every epoch",
    )
    weight_map: WeightMapParams = _section_field(WeightMapParams)


Postprocess = Literal["none", "largest_component"]


class InferenceParams(Strict):
    """Inference: how a trained model predicts (tracked by evaluate and sweep_evaluate only; the model file
    carries its training run's values as the defaults of predict and the viewer)."""

    threshold: float = Field(
        0.3, ge=0, le=1, description="sigmoid probability above which a pixel is tumour (one-class models: LGG)"
    )
    tta: bool = Field(False, description="predict as the mean over the four flips of each slice")
    postprocess: Postprocess = Field(
        "none", description="none, or largest_component: per case, only the largest connected tumour stays"
    )


class RunParams(Strict):
    """Execution: how a run executes, not what it learns or predicts (tracked by no stage: changing it never
    retrains)."""

    device: DeviceName = Field(
        "auto", description="the torch device: auto (cuda where available, else cpu), cpu or cuda"
    )
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 keeps torch's default")
    overlay_every: int = Field(5, ge=1, description="log validation overlays to MLflow every N epochs")
    overlay_slices: int = Field(4, ge=1, description="validation slices in each overlay (those with the most tumour)")


class SweepRun(Strict):
    """One entry of `sweeps`, named by its key: stage sweep_train@NAME trains it, sweep_evaluate@NAME
    evaluates it."""

    loss: LossName | None = Field(None, description="its loss (wbce, dice or combined); null: the top level's")
    lr: float | None = Field(None, gt=0, description="its learning rate; null: the top level's")
    epochs: int | None = Field(None, ge=1, description="its epochs; null: the top level's")
