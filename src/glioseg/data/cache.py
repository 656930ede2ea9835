"""The array store: every kept slice decoded and resized once, with its border-distance map.

``data/cache/slices.npz`` holds, for N kept slices at S = augment.image_size:

- ``images`` uint8 (N,S,S,C), ``masks`` uint8 (N,S,S) class labels (LGG: {0,1}),
- ``distance`` float16 (N,S,S): d1+d2 to the two nearest tumour regions (any tumour class) (+inf with fewer than two),
  so the weighted-BCE weight map is a cheap elementwise function at train time whatever
  ``w0``/``sigma`` are,
- ``patient`` (N,) str, ``slice`` (N,) int, ``subset`` (N,) str.

Built by :mod:`glioseg.data.build` (the cache stage); training and evaluation only load it, so
they do not depend on how raw files are read. Uncompressed ``.npz`` on purpose: it loads in well
under a second and DVC de-duplicates it.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from glioseg.errors import DataError
from glioseg.io import atomic_path

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


def save_cache(arrays: SliceArrays, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **{name: getattr(arrays, name) for name in ARRAYS})


def load_cache(path: str | os.PathLike) -> SliceArrays:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: array cache not found (run `dvc repro cache`)")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = set(ARRAYS) - set(data.files)
            if missing:
                raise DataError(
                    f"{path}: missing arrays {', '.join(sorted(missing))}; rebuild it with `dvc repro cache`"
                )
            return SliceArrays(**{name: data[name] for name in ARRAYS})
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"{path}: damaged ({type(exc).__name__}); restore it with `dvc checkout {path}` "
            "or rebuild it with `dvc repro --force cache`"
        ) from None
