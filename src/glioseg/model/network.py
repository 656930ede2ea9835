"""The smp U-Net factory from the model params, and the rule that turns its logits into labels."""

from __future__ import annotations

import math

import numpy as np
import segmentation_models_pytorch as smp
import torch

from glioseg.config.sections import ModelParams
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


def logit(probability: float) -> float:
    """Threshold on logits equivalent to ``sigmoid(logit) > probability`` (no sigmoid needed)."""
    probability = min(max(probability, 1e-7), 1 - 1e-7)
    return float(np.log(probability / (1 - probability)))


def labels_from_logits(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """(N,H,W) uint8 class labels: one channel -> sigmoid above ``threshold``; C channels -> argmax."""
    if logits.shape[1] == 1:
        return (logits[:, 0].float() > logit(threshold)).to(torch.uint8)
    return logits.argmax(dim=1).to(torch.uint8)
