"""The split stage: train/val/test by patient (or site, or slice) -> data/split.csv."""

from __future__ import annotations

from typing import Any

from glioseg import paths
from glioseg.config.schema import Params
from glioseg.data.split import split_slices, summarise_split
from glioseg.io import read_stage_csv, write_csv


def run(params: Params) -> dict[str, Any]:
    table = split_slices(read_stage_csv(paths.LABELS, "labels"), params.split, params.seed)
    write_csv(paths.SPLIT, table)
    return summarise_split(table, params.split)
