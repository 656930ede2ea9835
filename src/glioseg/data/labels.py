"""Diagnosis labels: one row per slice, kept or removed by the clean stage."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage
from tqdm import tqdm

from glioseg.data.lgg import read_mask

LABEL_COLUMNS = ["patient", "slice", "image", "mask", "diagnosis", "tumour_pixels", "components", "kept"]

# 8-connectivity: tumour pixels touching at a corner belong to one region.
CONNECTIVITY = np.ones((3, 3), dtype=bool)


def count_components(mask: np.ndarray) -> int:
    """Number of separate tumour regions in a binary mask (8-connected)."""
    return int(ndimage.label(mask > 0, structure=CONNECTIVITY)[1])


def slice_label(mask: np.ndarray) -> dict[str, int]:
    tumour_pixels = int((mask > 0).sum())
    return {
        "diagnosis": int(tumour_pixels > 0),
        "tumour_pixels": tumour_pixels,
        "components": count_components(mask),
    }


def build_labels(manifest: pd.DataFrame, removed: pd.DataFrame) -> pd.DataFrame:
    """Label every slice of the manifest; ``kept`` is 0 for slices listed in ``removed``."""
    removed_keys = set(zip(removed["patient"], removed["slice"].astype(int)))
    rows = []
    for row in tqdm(manifest.itertuples(index=False), total=len(manifest), desc="labels", unit="slice"):
        rows.append(
            {
                "patient": row.patient,
                "slice": int(row.slice),
                "image": row.image,
                "mask": row.mask,
                **slice_label(read_mask(row.mask)),
                "kept": int((row.patient, int(row.slice)) not in removed_keys),
            }
        )
    return pd.DataFrame(rows, columns=LABEL_COLUMNS)


def summarise_labels(labels: pd.DataFrame) -> dict[str, int]:
    kept = labels[labels["kept"] == 1]
    return {
        "pairs": len(labels),
        "positive": int(labels["diagnosis"].sum()),
        "negative": int((labels["diagnosis"] == 0).sum()),
        "removed": int((labels["kept"] == 0).sum()),
        "removed_positive": int(labels.loc[labels["kept"] == 0, "diagnosis"].sum()),
        "kept": len(kept),
        "patients": labels["patient"].nunique(),
    }
