"""A model's labels for arrays of slices, batch by batch (test-time augmentation and
post-processing wrap it in :mod:`glioseg.inference.predictor`)."""

from __future__ import annotations

import numpy as np
import torch

from glioseg.data.batch_augment import Normaliser
from glioseg.device import autocast, autocast_dtype, to_tensor
from glioseg.model.network import labels_from_logits


@torch.no_grad()
def predict_labels(
    model: torch.nn.Module,
    images: np.ndarray,
    normaliser: Normaliser,
    device: torch.device,
    threshold: float,
    batch_size: int = 32,
    amp: bool = True,
) -> np.ndarray:
    """Class labels (N,H,W) uint8 for uint8 images (N,H,W,C) already at model size (LGG: 0/1).

    ``model`` is called as it is, with no post-processing: training's validation overlays pass
    the bare U-Net; :class:`glioseg.inference.predictor.Predictor` (evaluate, predict, the viewer) passes
    its flip-averaged one for test-time augmentation and post-processes the result per case.
    """
    model.eval()
    out = np.empty(images.shape[:3], np.uint8)
    for start in range(0, len(images), batch_size):
        batch = normaliser.normalise(to_tensor(images[start : start + batch_size], device))
        batch = batch.contiguous(memory_format=torch.channels_last)
        with autocast(device, autocast_dtype(device, amp)):
            logits = model(batch)
        out[start : start + batch_size] = labels_from_logits(logits, threshold).cpu().numpy()
    return out
