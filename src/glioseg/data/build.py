"""Building the array store (the cache stage): every kept slice decoded, resized and measured once."""

from __future__ import annotations

import os
import sys

import numpy as np
import pandas as pd

from glioseg.config.schema import Params
from glioseg.data.borders import border_distance_sum
from glioseg.data.cache import SliceArrays, volume_indices
from glioseg.data.context import stack_context
from glioseg.data.reader import read_slices
from glioseg.data.transforms import preprocess_pipeline
from glioseg.errors import ConfigError, DataError
from glioseg.formats.intensity import window_case


def available_memory() -> int:
    """Bytes of memory a new allocation can have now: Linux's MemAvailable, else free pages, else no bound."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return sys.maxsize


def check_memory(slices: int, size: int, bytes_per_pixel: int) -> None:
    """Refuse, naming the key, a cache that would not fit in memory, before numpy tries to allocate it."""
    needed = slices * size * size * bytes_per_pixel
    available = available_memory()
    if needed > available:
        raise ConfigError(
            f"params.yaml: key 'augment.image_size': {size} px needs {needed / 2**30:.1f} GiB of memory "
            f"for the cache's {slices} slices, more than the {available / 2**30:.1f} GiB available; "
            "choose a smaller size"
        )


def build_cache(labels: pd.DataFrame, split: pd.DataFrame, params: Params) -> SliceArrays:
    """Decode, resize and measure every slice of ``split`` (kept slices, with their subset).

    With ``data.window`` each patient's slices are windowed (:func:`window_case`) over all of its
    slices in ``labels``, kept or not, as the predictor windows a patient folder. With
    ``data.context: N`` each kept slice's image is then its stack of neighbours
    (:func:`stack_context`), taken from the same slices.
    """
    rows = split.merge(labels[["patient", "slice", "image", "mask"]], on=["patient", "slice"], how="left")
    if rows["image"].isna().any():
        first = rows[rows["image"].isna()].iloc[0]
        raise DataError(f"data/split.csv: slice {first.patient}_{first.slice} is not in data/labels.csv")
    size = params.augment.image_size
    resize = preprocess_pipeline(size)
    context, window = params.data.context, params.data.window
    whole_patients = context or window is not None
    decoded = labels[labels["patient"].isin(rows["patient"])] if whole_patients else rows
    decoded = decoded.sort_values(["patient", "slice"]).reset_index(drop=True)
    n = len(decoded)
    check_memory(n, size, params.slice_channels + 1 + 2 + (params.input_channels if whole_patients else 0))
    images = np.empty((n, size, size, params.slice_channels), np.uint8)
    masks = np.empty((n, size, size), np.uint8)
    distance = np.empty((n, size, size), np.float16)
    for row, image, mask in read_slices(decoded, params, desc="cache"):
        out = resize(image=image, mask=mask)
        images[row.Index], masks[row.Index] = out["image"], out["mask"]
        distance[row.Index] = border_distance_sum(out["mask"]).astype(np.float16)
    if whole_patients:
        stacked = np.empty((n, size, size, params.input_channels), np.uint8)
        for _, index in volume_indices(decoded["patient"].to_numpy(str), decoded["slice"].to_numpy(np.int64)):
            stacked[index] = stack_context(window_case(images[index], window), context)
        images = stacked
    position = pd.Series(np.arange(n), index=pd.MultiIndex.from_frame(decoded[["patient", "slice"]]))
    kept = position.loc[list(zip(rows["patient"], rows["slice"]))].to_numpy()
    return SliceArrays(
        images=images[kept],
        masks=masks[kept],
        distance=distance[kept],
        patient=rows["patient"].to_numpy(str),
        slice=rows["slice"].to_numpy(np.int64),
        subset=rows["subset"].to_numpy(str),
    )
