"""Intensity windows: each channel of a case mapped between two of its own percentiles to 0..255.

MRI intensities have no absolute scale: each scanner and protocol stores its own, so a model
trained on some sites meets other scales at another. A window computed per case removes the
case's scale before the train split's global normalisation. BraTS volumes are always windowed
inside the brain (``data.brats.percentiles``); LGG patients are windowed over all their slices'
pixels when ``data.window`` is set, as Buda et al. (2019) rescale each LGG volume between two of
its percentiles. The Kaggle slices have no constant background to tell the brain by (their
background is low noise, not one value), so the LGG window takes every pixel.
"""

from __future__ import annotations

import numpy as np


def window_to_uint8(channel: np.ndarray, inside: np.ndarray | None, percentiles: tuple[float, float]) -> np.ndarray:
    """Intensities windowed between two percentiles of those ``inside`` (None: all) to 0..255; outside 0."""
    region = channel if inside is None else channel[inside]
    if region.size == 0:
        return np.zeros(channel.shape, np.uint8)
    low, high = np.percentile(region, percentiles)
    scaled = np.clip((channel - low) / max(high - low, 1e-6), 0.0, 1.0) * 255.0 + 0.5
    return (scaled if inside is None else np.where(inside, scaled, 0)).astype(np.uint8)


def window_case(slices: np.ndarray, percentiles: tuple[float, float] | None) -> np.ndarray:
    """(Z,H,W,C) uint8 slices of one case, each channel windowed over all of the case's pixels (None: as they are)."""
    if percentiles is None:
        return slices
    channels = slices.astype(np.float32)
    return np.stack([window_to_uint8(channels[..., c], None, percentiles) for c in range(slices.shape[-1])], axis=-1)


def check_percentiles(percentiles: tuple[float, float]) -> tuple[float, float]:
    """A window's ``(low, high)`` percentiles, or a ValueError for the params' validation to name."""
    low, high = percentiles
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {list(percentiles)}")
    return percentiles
