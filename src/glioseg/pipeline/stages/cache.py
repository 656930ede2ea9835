"""The cache stage: kept slices decoded and resized once -> data/cache/slices.npz."""

from __future__ import annotations

from typing import Any

from glioseg import paths
from glioseg.config.schema import Params
from glioseg.data.build import build_cache
from glioseg.data.cache import save_cache
from glioseg.io import read_stage_csv


def run(params: Params) -> dict[str, Any]:
    arrays = build_cache(read_stage_csv(paths.LABELS, "labels"), read_stage_csv(paths.SPLIT, "split"), params)
    save_cache(arrays, paths.CACHE)
    return {"slices": len(arrays), "image_size": arrays.image_size}
