"""The smp U-Net factory, from the model params."""

from __future__ import annotations

import math

import segmentation_models_pytorch as smp
import torch

from glioseg.config.schema import ModelParams
from glioseg.errors import DataError


def build_model(params: ModelParams) -> torch.nn.Module:
    """The U-Net of ``params``; ``model.norm: group`` swaps its batch norms for group norms."""
    try:
        model = smp.Unet(
            encoder_name=params.encoder,
            encoder_depth=params.encoder_depth,
            encoder_weights=params.encoder_weights,
            decoder_channels=params.decoder_channels,
            in_channels=params.in_channels,
            classes=params.classes,
        )
    except KeyError as exc:
        raise DataError(f"params.yaml: key 'model.encoder': unknown encoder {exc}") from None
    return to_group_norm(model) if params.norm == "group" else model


def to_group_norm(module: torch.nn.Module, groups: int = 32) -> torch.nn.Module:
    """Replace every BatchNorm2d by a GroupNorm over the same channels, in place.

    Group norm does not depend on the batch, so data-parallel training with it computes the
    single-process gradients on any device (SyncBatchNorm needs CUDA). ``groups`` is capped by
    the channel count (``gcd``), as small decoder stages have fewer channels than 32.
    """
    for name, child in module.named_children():
        if isinstance(child, torch.nn.BatchNorm2d):
            setattr(module, name, torch.nn.GroupNorm(math.gcd(groups, child.num_features), child.num_features))
        else:
            to_group_norm(child, groups)
    return module
