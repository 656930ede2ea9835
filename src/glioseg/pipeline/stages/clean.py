"""The clean stage: dark slices of the manifest -> data/removed.csv."""

from __future__ import annotations

from typing import Any

from glioseg import paths
from glioseg.config.schema import Params
from glioseg.data.clean import find_dark, measure_slices
from glioseg.io import read_stage_csv, write_csv


def run(params: Params) -> dict[str, Any]:
    manifest = read_stage_csv(paths.MANIFEST, "download")
    removed = find_dark(measure_slices(manifest, params), params.clean.min_mean_intensity)
    write_csv(paths.REMOVED, removed)
    return {"removed": len(removed), "removed_positive": int(removed["diagnosis"].sum())}
