"""The one inference path of evaluate, predict and the viewer: a model file's model with its settings.

A :class:`Predictor` holds what every prediction needs and nothing the caller could assemble
differently: the model on its device, the model file's eval normalisation
(:func:`transforms.eval_normaliser`) and preprocess pipeline, and the inference settings
(:class:`~glioseg.config.InferenceParams`: those given, else the model file's). It predicts

- model-size images -> class labels (batched; flip test-time augmentation when ``tta``;
  threshold or argmax), the step the other two share;
- one case's original-size images -> the model's own resize -> labels -> the case's
  post-processing (what predict and the viewer show);
- cached arrays of many cases (:class:`SliceArrays`) -> labels post-processed case by case
  (what evaluate scores).

Training does not import this module: its validation and overlays call
:func:`inference.predict_labels` at probability 0.5 without TTA or post-processing, so editing
inference-only code never re-runs training.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from glioseg.config import InferenceParams
from glioseg.data.cache import SliceArrays
from glioseg.inference import predict_labels, select_device
from glioseg.model import LoadedModel
from glioseg.postprocess import postprocess_case, postprocess_cases
from glioseg.transforms import eval_normaliser, pipelines_from_dict

FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


def flip_averaged_logits(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Logits of the class probabilities averaged over the four flips of ``batch`` (nnU-Net's mirroring).

    Sigmoid (one channel) or softmax probabilities of each flipped copy are flipped back and
    averaged; the result is returned as logits (log-odds or log-probabilities), so
    ``labels_from_logits`` applies unchanged.
    """
    total = None
    for dims in FLIPS:
        logits = model(batch.flip(dims) if dims else batch).float()
        logits = logits.flip(dims) if dims else logits
        probabilities = torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)
        total = probabilities if total is None else total + probabilities
    mean = (total / len(FLIPS)).clamp(1e-7, 1 - 1e-7)
    return torch.logit(mean) if mean.shape[1] == 1 else torch.log(mean)


class FlipAveraged(torch.nn.Module):
    """``model`` under flip TTA: its forward is :func:`flip_averaged_logits` (4x the compute)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return flip_averaged_logits(self.model, batch)


class Predictor:
    """A loaded model on its device with its eval normalisation, preprocessing and inference settings.

    ``inference`` overrides the model file's settings (``loaded.inference``, its training run's);
    ``device_setting`` names where ``device`` came from (``run.device``, ``--device``) for the
    error when it cannot be used.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        device: str = "auto",
        inference: InferenceParams | None = None,
        batch_size: int = 32,
        device_setting: str = "run.device",
    ):
        self.loaded = loaded
        self.inference = inference if inference is not None else loaded.inference
        self.device = select_device(device, device_setting)
        self.model = loaded.model.to(self.device).eval()
        self.network = FlipAveraged(self.model) if self.inference.tta else self.model
        self.normaliser = eval_normaliser(loaded.pipelines)
        self.resize = pipelines_from_dict(loaded.pipelines)["preprocess"]
        self.batch_size = batch_size

    def labels(self, images: np.ndarray) -> np.ndarray:
        """(N,H,W) uint8 class labels for uint8 images (N,H,W,C) at model size, not post-processed."""
        return predict_labels(self.network, images, self.normaliser, self.device, self.inference.threshold,
                              self.batch_size)

    def preprocess(self, originals: Sequence[np.ndarray]) -> np.ndarray:
        """Original-size images -> model size, through the model file's own preprocess pipeline."""
        return np.stack([self.resize(image=image)["image"] for image in originals])

    def predict_case(self, originals: Sequence[np.ndarray]) -> np.ndarray:
        """Model-size (Z,H,W) labels of one case's original-size slices (in slice order), post-processed as a case."""
        return postprocess_case(self.labels(self.preprocess(originals)), self.inference.postprocess)

    def predict_arrays(self, arrays: SliceArrays) -> np.ndarray:
        """(N,H,W) labels of cached model-size slices of any cases, post-processed case by case."""
        labels = self.labels(arrays.images)
        return postprocess_cases(labels, arrays.patient, arrays.slice, self.inference.postprocess)
