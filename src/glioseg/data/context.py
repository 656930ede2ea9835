"""2.5-D context: each slice with the N slices above and below it as extra input channels.

A patient's slices, in slice order, become stacks of ``2N+1`` neighbours (offsets -N..N, each
with all its channels, the slice itself in the middle block); at the ends of the volume the
nearest slice repeats. The cache stage stacks every kept slice from all of its patient's slices,
and the predictor stacks a case's slices the same way, so training and inference see the same input.
"""

from __future__ import annotations

import numpy as np


def stack_context(volume: np.ndarray, context: int) -> np.ndarray:
    """(Z,H,W,C) slices of one case in slice order -> (Z,H,W,C*(2N+1)) stacks of their neighbours."""
    if context == 0:
        return volume
    depth = len(volume)
    neighbours = np.clip(np.arange(depth)[:, None] + np.arange(-context, context + 1)[None, :], 0, depth - 1)
    stacked = volume[neighbours]  # (Z, 2N+1, H, W, C)
    return np.ascontiguousarray(np.moveaxis(stacked, 1, 3)).reshape(*volume.shape[:3], -1)


def centre_slice(images: np.ndarray, context: int) -> np.ndarray:
    """The slices' own channels (the middle block) of context stacks (..., H, W, C*(2N+1)), for display."""
    if context == 0:
        return images
    channels = images.shape[-1] // (2 * context + 1)
    return images[..., context * channels : (context + 1) * channels]
