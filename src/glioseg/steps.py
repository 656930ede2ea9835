"""The data stages end to end: each reads its inputs from :mod:`glioseg.paths` and writes its outputs.

These are what ``stages/*.py`` and ``glioseg stage ...`` call; the work itself lives in
``glioseg.data`` and ``glioseg.transforms``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import pandas as pd

from glioseg import paths
from glioseg.config import Params
from glioseg.data.cache import build_cache, load_cache, save_cache
from glioseg.data.clean import find_dark, measure_slices
from glioseg.data.labels import build_labels, summarise_labels
from glioseg.data.sources import fetch_brats, fetch_lgg
from glioseg.data.split import split_slices, summarise_split
from glioseg.errors import DataError
from glioseg.io import write_csv, write_json
from glioseg.transforms import build_pipelines, pipelines_to_dict
from glioseg.viz import class_colours, display_image, overlay_grid, save_png


def read_csv(path: Path, stage: str) -> pd.DataFrame:
    if not Path(path).is_file():
        raise DataError(f"{path}: not found (run `dvc repro {stage}`)")
    return pd.read_csv(path)


def download(params: Params) -> dict[str, Any]:
    data = params.data
    if params.dataset == "brats":
        manifest = fetch_brats(data.source, paths.RAW_BRATS, paths.MANIFEST, patients=data.patients,
                               synthetic=data.synthetic, params=data.brats)
        return {"cases": manifest["patient"].nunique(), "slices": len(manifest)}
    manifest = fetch_lgg(data.source, paths.RAW_LGG, paths.MANIFEST, patients=data.patients, synthetic=data.synthetic)
    return {"patients": manifest["patient"].nunique(), "pairs": len(manifest)}


def clean(params: Params) -> dict[str, Any]:
    manifest = read_csv(paths.MANIFEST, "download")
    removed = find_dark(measure_slices(manifest, params), params.clean.min_mean_intensity)
    write_csv(paths.REMOVED, removed)
    return {"removed": len(removed), "removed_positive": int(removed["diagnosis"].sum())}


def labels(params: Params) -> dict[str, Any]:
    table = build_labels(read_csv(paths.MANIFEST, "download"), read_csv(paths.REMOVED, "clean"), params)
    write_csv(paths.LABELS, table)
    return summarise_labels(table)


def split(params: Params) -> dict[str, Any]:
    table = split_slices(read_csv(paths.LABELS, "labels"), params.split, params.seed)
    write_csv(paths.SPLIT, table)
    return summarise_split(table)


def cache(params: Params) -> dict[str, Any]:
    arrays = build_cache(read_csv(paths.LABELS, "labels"), read_csv(paths.SPLIT, "split"), params)
    save_cache(arrays, paths.CACHE)
    return {"slices": len(arrays), "image_size": arrays.image_size}


def preview(pipeline: A.Compose, images: np.ndarray, masks: np.ndarray, seed: int) -> list[np.ndarray]:
    """Panels original image, original mask, augmented image, augmented mask for each slice.

    The normalisation is left out so the augmented image displays like the original.
    """
    geometry = A.Compose([t for t in pipeline.transforms if not isinstance(t, A.Normalize)], seed=seed)
    panels = []
    for image, mask in zip(images, masks):
        out = geometry(image=image, mask=mask)
        panels += [display_image(image), class_colours(mask), display_image(out["image"]),
                   class_colours(out["mask"])]
    return panels


def augment(params: Params) -> dict[str, Any]:
    arrays = load_cache(paths.CACHE).select("train")
    if len(arrays) == 0:
        raise DataError(f"{paths.SPLIT}: the train subset is empty")
    pipelines = build_pipelines(params.augment, arrays.images)
    write_json(paths.AUGMENT, pipelines_to_dict(pipelines))
    tumour = (arrays.masks > 0).reshape(len(arrays), -1).sum(axis=1, dtype=np.int64)
    shown = np.argsort(-tumour, kind="stable")[:4]
    panels = preview(pipelines["train"], arrays.images[shown], arrays.masks[shown], params.seed)
    titles = ["image", "mask", "augmented image", "augmented mask"] * len(shown)
    save_png(paths.AUGMENT_PREVIEW, overlay_grid(panels, titles, columns=4))
    normalise = pipelines["train"].transforms[-1]
    return {"mean": list(normalise.mean), "std": list(normalise.std)}
