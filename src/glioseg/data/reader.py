"""Slices of the manifest as arrays, whatever the dataset: the one place that decodes raw files.

Rows carry ``patient``, ``slice``, ``image`` and ``mask`` (the manifest's columns). For LGG each
row names a TIF pair; for BraTS ``image`` names the case folder and ``slice`` the axial index, so
a case's volumes are decoded once for all its rows. Either way a slice arrives as a uint8 image
(H,W,C) and uint8 class labels (H,W) (LGG: 0/1).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from glioseg.config.schema import Params
from glioseg.data.formats import brats
from glioseg.data.formats.lgg import read_image, read_mask

SliceRow = Any  # a row of ``DataFrame.itertuples``


def read_slices(rows: pd.DataFrame, params: Params, desc: str) -> Iterator[tuple[SliceRow, np.ndarray, np.ndarray]]:
    """Yield ``(row, image, labels)`` for every row; ``row.Index`` is its label in ``rows``.

    LGG rows come in order; BraTS rows case by case (in order of each case's first row).
    """
    progress = tqdm(total=len(rows), desc=desc, unit="slice")
    if params.dataset == "lgg":
        for row in rows.itertuples():
            progress.update()
            yield row, read_image(row.image), read_mask(row.mask)
    else:
        for folder, group in rows.groupby("image", sort=False):
            case = brats.read_case(Path(folder), params.data.brats)
            labels = case.labels
            assert labels is not None  # read with its labels
            for row in group.itertuples():
                progress.update()
                yield row, case.images[int(row.slice)], labels[int(row.slice)]
    progress.close()
