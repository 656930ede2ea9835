"""Slices of the manifest as arrays, whatever the dataset: the one place later stages decode raw files.

Rows carry ``patient``, ``slice``, ``image`` and ``mask`` (the manifest's columns); the dataset's
format reads them (:meth:`glioseg.formats.base.DataFormat.read_rows`). A slice arrives as a uint8
image (H,W,C) and uint8 class labels (H,W) (a binary format: 0/1).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
from tqdm import tqdm

from glioseg.config.schema import Params
from glioseg.formats.base import SliceRow


def read_slices(rows: pd.DataFrame, params: Params, desc: str) -> Iterator[tuple[SliceRow, np.ndarray, np.ndarray]]:
    """Yield ``(row, image, labels)`` for every row; ``row.Index`` is its label in ``rows``."""
    with tqdm(total=len(rows), desc=desc, unit="slice") as progress:
        for item in params.format.read_rows(rows, params.format_settings):
            progress.update()
            yield item
