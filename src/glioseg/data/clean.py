"""Dark-slice detection.

The real scans' background is scanner noise rather than exact zeros, so a slice is "dark" when
its mean intensity (over all pixels and channels, 0..255) falls below a threshold. With the
default 2.0 this removes the near-black slices at the ends of each volume (53 of the 3929
Kaggle pairs, all negative, per the data's own README).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm import tqdm

from glioseg.data.lgg import read_image, read_mask

REMOVED_COLUMNS = ["patient", "slice", "image", "mask", "mean_intensity", "diagnosis", "reason"]


def mean_intensity(image: np.ndarray) -> float:
    return float(image.mean())


def measure_slices(manifest: pd.DataFrame) -> pd.DataFrame:
    """Per-slice mean intensity and tumour pixel count, read once from the TIFs."""
    rows = []
    for row in tqdm(manifest.itertuples(index=False), total=len(manifest), desc="measure", unit="slice"):
        rows.append(
            {
                "patient": row.patient,
                "slice": int(row.slice),
                "image": row.image,
                "mask": row.mask,
                "mean_intensity": round(mean_intensity(read_image(row.image)), 4),
                "tumour_pixels": int(read_mask(row.mask).sum()),
            }
        )
    return pd.DataFrame(rows)


def find_dark(measured: pd.DataFrame, min_mean_intensity: float) -> pd.DataFrame:
    """Rows of ``measured`` whose mean intensity is below the threshold, with their diagnosis."""
    dark = measured[measured["mean_intensity"] < min_mean_intensity].copy()
    dark["diagnosis"] = (dark["tumour_pixels"] > 0).astype(int)
    dark["reason"] = [f"mean intensity {m:.2f} < {min_mean_intensity:g}" for m in dark["mean_intensity"]]
    return dark[REMOVED_COLUMNS].reset_index(drop=True)
