"""Post-processing of a predicted case: keep only its largest connected tumour (nnU-Net's rule).

Applied to a whole case (an LGG patient's slices stacked in slice order, a BraTS volume), so a
false-positive speck on a slice far from the tumour is removed while the tumour, connected
across slices, stays. Evaluate, predict and the viewer apply the model file's setting
(``inference.postprocess``) alike; validation during training does not.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from glioseg.config.sections import Postprocess
from glioseg.data.cache import volume_indices


def keep_largest_component(labels: np.ndarray) -> np.ndarray:
    """``labels`` with every foreground (label > 0) component but the largest set to 0.

    Components are face-connected (6-neighbourhood in 3-D); the classes inside the kept
    component are unchanged.
    """
    components, count = ndimage.label(labels > 0)
    if count <= 1:
        return labels
    sizes = np.bincount(components.ravel())[1:]
    return np.where(components == 1 + int(np.argmax(sizes)), labels, 0).astype(labels.dtype)


def postprocess_case(labels: np.ndarray, method: Postprocess) -> np.ndarray:
    """One case's label volume (slices first, in slice order)."""
    return keep_largest_component(labels) if method == "largest_component" else labels


def postprocess_cases(labels: np.ndarray, cases: np.ndarray, order: np.ndarray, method: Postprocess) -> np.ndarray:
    """Per-case post-processing of slices (N,H,W) that belong to ``cases``, stacked by ``order`` within each."""
    if method == "none":
        return labels
    out = labels.copy()
    for _, index in volume_indices(cases, order):
        out[index] = postprocess_case(labels[index], method)
    return out
