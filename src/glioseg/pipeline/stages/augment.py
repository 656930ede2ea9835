"""The augment stage: pipelines with the train split's normalisation -> data/augment.json, and a preview."""

from __future__ import annotations

from typing import Any

import albumentations as A
import numpy as np

from glioseg import paths
from glioseg.config.schema import Params
from glioseg.data.cache import load_cache
from glioseg.data.context import centre_slice
from glioseg.data.transforms import build_pipelines, pipelines_to_dict
from glioseg.errors import DataError
from glioseg.figures import class_colours, display_image, overlay_grid, save_png
from glioseg.io import write_json


def preview(pipeline: A.Compose, images: np.ndarray, masks: np.ndarray, seed: int) -> list[np.ndarray]:
    """Panels original image, original mask, augmented image, augmented mask for each slice.

    The normalisation is left out so the augmented image displays like the original.
    """
    geometry = A.Compose([t for t in pipeline.transforms if not isinstance(t, A.Normalize)], seed=seed)
    panels = []
    for image, mask in zip(images, masks):
        out = geometry(image=image, mask=mask)
        panels += [display_image(image), class_colours(mask), display_image(out["image"]), class_colours(out["mask"])]
    return panels


def run(params: Params) -> dict[str, Any]:
    arrays = load_cache(paths.CACHE).select("train")
    if len(arrays) == 0:
        raise DataError(f"{paths.SPLIT}: the train subset is empty")
    pipelines = build_pipelines(params.augment, arrays.images)
    write_json(paths.AUGMENT, pipelines_to_dict(pipelines))
    tumour = (arrays.masks > 0).reshape(len(arrays), -1).sum(axis=1, dtype=np.int64)
    shown = np.argsort(-tumour, kind="stable")[:4]
    images = centre_slice(arrays.images[shown], params.data.context)
    panels = preview(pipelines["train"], images, arrays.masks[shown], params.seed)
    titles = ["image", "mask", "augmented image", "augmented mask"] * len(shown)
    save_png(paths.AUGMENT_PREVIEW, overlay_grid(panels, titles, columns=4))
    normalise = pipelines["train"].transforms[-1]
    return {"mean": list(normalise.mean), "std": list(normalise.std)}
