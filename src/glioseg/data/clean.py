"""Dark-slice detection.

The real LGG scans' background is scanner noise rather than exact zeros, so a slice is "dark" when
its mean intensity (over all pixels and channels, 0..255) falls below a threshold. With the
default 2.0 this removes the near-black slices at the ends of each volume (53 of the 3929
Kaggle pairs, all negative, per the data's own README). BraTS slices are windowed to 0..255
inside the brain with 0 outside (:mod:`glioseg.formats.brats`), so there the same rule removes the
slices with little or no brain: the empty-slice handling of the seeds' fixed slice range.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from glioseg.config.schema import Params
from glioseg.data.reader import read_slices

REMOVED_COLUMNS = ["patient", "slice", "image", "mask", "mean_intensity", "diagnosis", "reason"]


def mean_intensity(image: np.ndarray) -> float:
    return float(image.mean())


def measure_slices(manifest: pd.DataFrame, params: Params) -> pd.DataFrame:
    """Per-slice mean intensity and tumour pixel count, each slice decoded once."""
    rows = []
    for row, image, labels in read_slices(manifest, params, desc="measure"):
        rows.append(
            {
                "patient": row.patient,
                "slice": int(row.slice),
                "image": row.image,
                "mask": row.mask,
                "mean_intensity": round(mean_intensity(image), 4),
                "tumour_pixels": int((labels > 0).sum()),
            }
        )
    return pd.DataFrame(rows)


def find_dark(measured: pd.DataFrame, min_mean_intensity: float) -> pd.DataFrame:
    """Rows of ``measured`` whose mean intensity is below the threshold, with their diagnosis."""
    dark = measured[measured["mean_intensity"] < min_mean_intensity].copy()
    dark["diagnosis"] = (dark["tumour_pixels"] > 0).astype(int)
    dark["reason"] = [f"mean intensity {m:.2f} < {min_mean_intensity:g}" for m in dark["mean_intensity"]]
    return dark[REMOVED_COLUMNS].reset_index(drop=True)
