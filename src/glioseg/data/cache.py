"""The array store: every kept slice decoded and resized once, with its border-distance map.

``data/cache/slices.npz`` holds, for N kept slices at S = augment.image_size:

- ``images`` uint8 (N,S,S,3), ``masks`` uint8 (N,S,S) in {0,1},
- ``distance`` float16 (N,S,S): d1+d2 to the two nearest tumour regions (+inf with fewer than two),
  so the weighted-BCE weight map is a cheap elementwise function at train time whatever
  ``w0``/``sigma`` are,
- ``patient`` (N,) str, ``slice`` (N,) int, ``subset`` (N,) str.

Uncompressed ``.npz`` on purpose: it loads in well under a second and DVC de-duplicates it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from glioseg.data.lgg import read_image, read_mask
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


def build_cache(labels: pd.DataFrame, split: pd.DataFrame, image_size: int) -> SliceArrays:
    """Decode, resize and measure every slice of ``split`` (kept slices, with their subset)."""
    rows = split.merge(labels[["patient", "slice", "image", "mask"]], on=["patient", "slice"], how="left")
    if rows["image"].isna().any():
        first = rows[rows["image"].isna()].iloc[0]
        raise DataError(f"data/split.csv: slice {first.patient}_{first.slice} is not in data/labels.csv")
    resize = preprocess_pipeline(image_size)
    n = len(rows)
    images = np.empty((n, image_size, image_size, 3), np.uint8)
    masks = np.empty((n, image_size, image_size), np.uint8)
    distance = np.empty((n, image_size, image_size), np.float16)
    for i, row in enumerate(tqdm(rows.itertuples(index=False), total=n, desc="cache", unit="slice")):
        out = resize(image=read_image(row.image), mask=read_mask(row.mask))
        images[i], masks[i] = out["image"], out["mask"]
        distance[i] = border_distance_sum(out["mask"]).astype(np.float16)
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
