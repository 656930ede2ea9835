"""The array store: every kept slice decoded and resized once, with its border-distance map.

``data/cache/slices.npz`` holds, for N kept slices at S = augment.image_size:

- ``images`` uint8 (N,S,S,C), ``masks`` uint8 (N,S,S) class labels (LGG: {0,1}),
- ``distance`` float16 (N,S,S): d1+d2 to the two nearest tumour regions (any tumour class) (+inf with fewer than two),
  so the weighted-BCE weight map is a cheap elementwise function at train time whatever
  ``w0``/``sigma`` are,
- ``patient`` (N,) str, ``slice`` (N,) int, ``subset`` (N,) str.

Uncompressed ``.npz`` on purpose: it loads in well under a second and DVC de-duplicates it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from glioseg.config import Params
from glioseg.data.reader import read_slices
from glioseg.errors import DataError
from glioseg.io import atomic_path
from glioseg.losses import border_distance_sum
from glioseg.transforms import preprocess_pipeline

ARRAYS = ("images", "masks", "distance", "patient", "slice", "subset")


@dataclass(frozen=True)
class SliceArrays:
    images: np.ndarray
    masks: np.ndarray
    distance: np.ndarray
    patient: np.ndarray
    slice: np.ndarray
    subset: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def take(self, index: np.ndarray) -> SliceArrays:
        return SliceArrays(**{name: getattr(self, name)[index] for name in ARRAYS})

    def select(self, subset: str) -> SliceArrays:
        return self.take(self.subset == subset)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])


def volume_indices(patients: np.ndarray, slices: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """Per patient (in sorted order), the row indices of its slices in slice order: its volume's stack."""
    for patient in np.unique(patients):
        index = np.flatnonzero(patients == patient)
        yield patient, index[np.argsort(slices[index], kind="stable")]


def build_cache(labels: pd.DataFrame, split: pd.DataFrame, params: Params) -> SliceArrays:
    """Decode, resize and measure every slice of ``split`` (kept slices, with their subset)."""
    rows = split.merge(labels[["patient", "slice", "image", "mask"]], on=["patient", "slice"], how="left")
    if rows["image"].isna().any():
        first = rows[rows["image"].isna()].iloc[0]
        raise DataError(f"data/split.csv: slice {first.patient}_{first.slice} is not in data/labels.csv")
    size = params.augment.image_size
    resize = preprocess_pipeline(size)
    n = len(rows)
    images = np.empty((n, size, size, params.input_channels), np.uint8)
    masks = np.empty((n, size, size), np.uint8)
    distance = np.empty((n, size, size), np.float16)
    for row, image, mask in read_slices(rows, params, desc="cache"):
        out = resize(image=image, mask=mask)
        images[row.Index], masks[row.Index] = out["image"], out["mask"]
        distance[row.Index] = border_distance_sum(out["mask"]).astype(np.float16)
    return SliceArrays(
        images=images,
        masks=masks,
        distance=distance,
        patient=rows["patient"].to_numpy(str),
        slice=rows["slice"].to_numpy(np.int64),
        subset=rows["subset"].to_numpy(str),
    )


def save_cache(arrays: SliceArrays, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **{name: getattr(arrays, name) for name in ARRAYS})


def load_cache(path: str | os.PathLike) -> SliceArrays:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: array cache not found (run `dvc repro cache`)")
    with np.load(path, allow_pickle=False) as data:
        missing = set(ARRAYS) - set(data.files)
        if missing:
            raise DataError(f"{path}: missing arrays {', '.join(sorted(missing))}; rebuild it with `dvc repro cache`")
        return SliceArrays(**{name: data[name] for name in ARRAYS})
