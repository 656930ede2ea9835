"""Diagnosis labels: one row per slice, kept or removed by the clean stage."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

from glioseg.config.schema import Params
from glioseg.data.reader import read_slices

LABEL_COLUMNS = ["patient", "slice", "image", "mask", "diagnosis", "tumour_pixels", "components", "kept"]

# 8-connectivity: tumour pixels touching at a corner belong to one region.
CONNECTIVITY = np.ones((3, 3), dtype=bool)


def count_components(mask: np.ndarray) -> int:
    """Number of separate tumour regions in a binary mask (8-connected)."""
    return int(ndimage.label(mask > 0, structure=CONNECTIVITY)[1])


def slice_label(mask: np.ndarray) -> dict[str, int]:
    """Diagnosis (any tumour label present), tumour pixels and regions of a slice's class labels."""
    tumour_pixels = int((mask > 0).sum())
    return {
        "diagnosis": int(tumour_pixels > 0),
        "tumour_pixels": tumour_pixels,
        "components": count_components(mask),
    }


def class_pixels(mask: np.ndarray, class_names: tuple[str, ...]) -> dict[str, int]:
    """``<class>_pixels`` for every tumour class (multi-class datasets)."""
    counts = np.bincount(mask.ravel(), minlength=len(class_names))
    return {f"{name}_pixels": int(counts[k]) for k, name in enumerate(class_names) if k > 0}


def build_labels(manifest: pd.DataFrame, removed: pd.DataFrame, params: Params) -> pd.DataFrame:
    """Label every slice of the manifest; ``kept`` is 0 for slices listed in ``removed``.

    BraTS tables also count each tumour class (``<class>_pixels``), after the label map.
    """
    removed_keys = set(zip(removed["patient"], removed["slice"].astype(int)))
    class_names = params.class_names()
    rows = []
    for row, _, mask in read_slices(manifest, params, desc="labels"):
        rows.append(
            {
                "patient": row.patient,
                "slice": int(row.slice),
                "image": row.image,
                "mask": row.mask,
                **slice_label(mask),
                "kept": int((row.patient, int(row.slice)) not in removed_keys),
                **class_pixels(mask, class_names),
            }
        )
    extra = [f"{name}_pixels" for name in class_names[1:]]
    return pd.DataFrame(rows, columns=LABEL_COLUMNS + extra)


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
