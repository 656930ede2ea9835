"""The download stage: the raw cases of ``data.source`` (or the synthetic set) under data/raw, and the manifest."""

from __future__ import annotations

from typing import Any

from glioseg import paths
from glioseg.config import Params
from glioseg.data.sources import fetch_brats, fetch_lgg


def run(params: Params) -> dict[str, Any]:
    data = params.data
    if params.dataset == "brats":
        manifest = fetch_brats(data.source, paths.RAW_BRATS, paths.MANIFEST, patients=data.patients,
                               synthetic=data.synthetic, params=data.brats)
        return {"cases": manifest["patient"].nunique(), "slices": len(manifest)}
    manifest = fetch_lgg(data.source, paths.RAW_LGG, paths.MANIFEST, patients=data.patients, synthetic=data.synthetic)
    return {"patients": manifest["patient"].nunique(), "pairs": len(manifest)}
