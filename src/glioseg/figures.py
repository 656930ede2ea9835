"""Pictures: slice overlays with truth/prediction outlines, grids and learning curves."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, cast

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import ndimage

from glioseg.io import atomic_path

if TYPE_CHECKING:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

TRUTH_COLOUR = (0, 255, 0)
PREDICTION_COLOUR = (255, 0, 0)
# One colour per class label (0 = background, unused); BraTS: necrotic core, oedema, enhancing.
CLASS_COLOURS = np.array(
    [(0, 0, 0), (255, 64, 64), (64, 220, 64), (255, 220, 0), (64, 160, 255), (220, 64, 255)], dtype=np.uint8
)
CLASS_COLOUR_NAMES = ("black", "red", "green", "yellow", "blue", "purple")
FILL_OPACITY = 0.45
DISPLAY_CHANNEL = 1  # FLAIR in the LGG layout and in the default BraTS modalities (t1ce, flair)


def outline(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a binary mask (the mask minus its erosion)."""
    mask = mask > 0
    return mask & ~ndimage.binary_erosion(mask)


def display_image(image: np.ndarray) -> np.ndarray:
    """An MRI slice (H,W,C) as displayable uint8 RGB: channel 1 (FLAIR) in grey, or the only one."""
    channel = image[..., min(DISPLAY_CHANNEL, image.shape[-1] - 1)] if image.ndim == 3 else image
    return np.repeat(channel[..., None], 3, axis=-1).astype(np.uint8)


def palette_index(labels: np.ndarray | int) -> np.ndarray:
    """Each class label's row of ``CLASS_COLOURS``: 0 for background, cycling past the palette's end."""
    labels = np.asarray(labels, dtype=np.int64)
    return np.where(labels > 0, (labels - 1) % (len(CLASS_COLOURS) - 1) + 1, 0)


def class_colours(labels: np.ndarray) -> np.ndarray:
    """Class labels (H,W) as RGB uint8, one colour per class on black."""
    return CLASS_COLOURS[palette_index(labels)]


def class_colour_name(label: int) -> str:
    """The name of class ``label``'s colour, for legends."""
    return CLASS_COLOUR_NAMES[int(palette_index(label))]


def fill(image: np.ndarray, labels: np.ndarray, opacity: float = FILL_OPACITY) -> np.ndarray:
    """The slice in grey with each labelled pixel blended towards its class colour."""
    base = display_image(image).astype(np.float32)
    blended = (1 - opacity) * base + opacity * class_colours(labels).astype(np.float32)
    return np.where((labels > 0)[..., None], blended, base).round().astype(np.uint8)


def overlay(image: np.ndarray, truth: np.ndarray | None, prediction: np.ndarray | None, classes: int = 1) -> np.ndarray:
    """RGB uint8 picture of a slice with its truth and prediction.

    One class (binary masks): the truth outlined in green and the prediction in red on one
    slice. Several classes: truth and prediction side by side, each class filled in its colour.
    """
    if classes > 1:
        panels = [fill(image, labels) for labels in (truth, prediction) if labels is not None]
        return np.concatenate(panels, axis=1) if panels else display_image(image)
    out = display_image(image).copy()
    for mask, colour in ((truth, TRUTH_COLOUR), (prediction, PREDICTION_COLOUR)):
        if mask is not None:
            out[outline(mask)] = colour
    return out


def save_png(path: str | os.PathLike, figure: plt.Figure) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)


def overlay_grid(panels: list[np.ndarray], titles: list[str], columns: int = 4) -> plt.Figure:
    rows = max(1, -(-len(panels) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.2 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, panel, title in zip(axes.flat, panels, titles):
        axis.imshow(panel)
        axis.set_title(title, fontsize=8)
    figure.tight_layout()
    return figure


def figure_to_array(figure: plt.Figure) -> np.ndarray:
    figure.canvas.draw()
    canvas = cast("FigureCanvasAgg", figure.canvas)  # the Agg backend's (matplotlib.use above)
    array = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    plt.close(figure)
    return array


def learning_curves(history: pd.DataFrame, title: str = "") -> plt.Figure:
    metrics = [m for m in ("loss", "dice", "iou") if f"train_{m}" in history]
    figure, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.4), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        for subset in ("train", "val"):
            axis.plot(history["epoch"], history[f"{subset}_{metric}"], label=subset)
        axis.set_xlabel("epoch")
        axis.set_title(metric)
        axis.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure
