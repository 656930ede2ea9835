"""Albumentations pipelines built from params, serialized with the data and in every checkpoint.

Three pipelines travel together in ``data/augment.json`` (albumentations' own ``to_dict``
format) and inside every model checkpoint, so predict applies exactly what training did:

- ``preprocess``: resize to ``augment.image_size`` (area for images, nearest for masks), applied
  once when the array cache is built;
- ``train``: a random square crop of ``augment.crop`` pixels when set (patch training: the
  network trains on crops and predicts whole slices, so a higher ``image_size`` costs no more per
  training step), horizontal flip, vertical flip, RandomRotate90 (each with its probability),
  Affine (with ``augment.affine``: a random rotation and zoom about the centre, as nnU-Net
  augments), RandomBrightnessContrast (with ``augment.brightness_contrast``: intensity differences
  between scanners and sites), then normalisation with the train split's per-channel mean and std;
- ``eval``: the normalisation alone.

Their batched-tensor twin for training and prediction is :mod:`glioseg.data.batch_augment`.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import cv2
import numpy as np

from glioseg.config.sections import AugmentParams
from glioseg.errors import DataError


def preprocess_pipeline(image_size: int) -> A.Compose:
    return A.Compose(
        [A.Resize(image_size, image_size, interpolation=cv2.INTER_AREA, mask_interpolation=cv2.INTER_NEAREST)]
    )


def normalize(mean: list[float], std: list[float]) -> A.Normalize:
    return A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0)


def train_pipeline(params: AugmentParams, mean: list[float], std: list[float]) -> A.Compose:
    if not params.enabled:
        return A.Compose([normalize(mean, std)], additional_targets={"distance": "mask"})
    crop = [A.RandomCrop(params.crop, params.crop)] if params.crop is not None else []
    flips = [A.HorizontalFlip(p=params.hflip), A.VerticalFlip(p=params.vflip), A.RandomRotate90(p=params.rotate90)]
    # Left out at p = 0 (unlike the flips) so pipelines without it serialize as they always have.
    brightness_contrast = (
        [
            A.RandomBrightnessContrast(
                brightness_limit=params.brightness_limit,
                contrast_limit=params.contrast_limit,
                p=params.brightness_contrast,
            )
        ]
        if params.brightness_contrast > 0
        else []
    )
    affine = (
        [
            A.Affine(
                rotate=(-params.rotate_limit, params.rotate_limit),
                scale=(1 - params.scale_limit, 1 + params.scale_limit),
                keep_ratio=True,
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=0,
                p=params.affine,
            )
        ]
        if params.affine > 0
        else []
    )
    return A.Compose(
        [*crop, *flips, *affine, *brightness_contrast, normalize(mean, std)], additional_targets={"distance": "mask"}
    )


def eval_pipeline(mean: list[float], std: list[float]) -> A.Compose:
    return A.Compose([normalize(mean, std)])


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images (N,H,W,C), on the 0..1 scale Normalize expects."""
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    std = pixels.std(axis=0)
    return pixels.mean(axis=0).round(6).tolist(), np.where(std > 0, std, 1.0).round(6).tolist()


def build_pipelines(params: AugmentParams, train_images: np.ndarray) -> dict[str, A.Compose]:
    mean, std = channel_stats(train_images)
    return {
        "preprocess": preprocess_pipeline(params.image_size),
        "train": train_pipeline(params, mean, std),
        "eval": eval_pipeline(mean, std),
    }


def pipelines_to_dict(pipelines: dict[str, A.Compose]) -> dict[str, Any]:
    return {name: A.to_dict(pipeline) for name, pipeline in pipelines.items()}


def pipelines_from_dict(serialized: dict[str, Any], source: str = "augment.json") -> dict[str, A.Compose]:
    missing = {"preprocess", "train", "eval"} - set(serialized)
    if missing:
        raise DataError(f"{source}: missing pipeline(s) {', '.join(sorted(missing))}")
    return {name: A.from_dict(data) for name, data in serialized.items()}
