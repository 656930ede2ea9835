"""The smp U-Net factory and checkpoint files that carry everything predict needs.

A checkpoint holds only tensors and plain data (state dict, model params, the serialized
albumentations pipelines, the threshold), so it loads with ``torch.load(weights_only=True)``:
no unpickling of arbitrary objects from user files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import torch
from pydantic import ValidationError

from glioseg.config import ModelParams
from glioseg.errors import DataError
from glioseg.io import atomic_path


def build_model(params: ModelParams) -> torch.nn.Module:
    try:
        return smp.Unet(
            encoder_name=params.encoder,
            encoder_depth=params.encoder_depth,
            encoder_weights=params.encoder_weights,
            decoder_channels=params.decoder_channels,
            in_channels=params.in_channels,
            classes=params.classes,
        )
    except KeyError as exc:
        raise DataError(f"params.yaml: key 'model.encoder': unknown encoder {exc}") from None


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: model file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise DataError(f"{path}: not a glioseg checkpoint ({type(exc).__name__})") from None


@dataclass
class LoadedModel:
    model: torch.nn.Module
    params: ModelParams
    pipelines: dict[str, Any]
    threshold: float
    meta: dict[str, Any]


def model_payload(model: torch.nn.Module, params: ModelParams, pipelines: dict, threshold: float, **meta) -> dict:
    return {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model_params": params.model_dump(),
        "pipelines": pipelines,
        "threshold": threshold,
        "meta": meta,
    }


def load_model(path: str | os.PathLike) -> LoadedModel:
    payload = read_checkpoint(path)
    try:
        params = ModelParams.model_validate(payload["model_params"])
        model = build_model(params)
        model.load_state_dict(payload["state_dict"])
    except (KeyError, ValidationError, RuntimeError) as exc:
        raise DataError(f"{path}: checkpoint does not match a glioseg U-Net ({type(exc).__name__})") from None
    model.eval()
    return LoadedModel(model, params, payload["pipelines"], float(payload["threshold"]), payload.get("meta", {}))
