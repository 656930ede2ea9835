"""Building the array store (the cache stage): every kept slice decoded, resized and measured once."""

from __future__ import annotations

import numpy as np
import pandas as pd

from glioseg.config import Params
from glioseg.data.cache import SliceArrays, volume_indices
from glioseg.data.context import stack_context
from glioseg.data.intensity import window_case
from glioseg.data.reader import read_slices
from glioseg.errors import DataError
from glioseg.losses import border_distance_sum
from glioseg.transforms import preprocess_pipeline


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
