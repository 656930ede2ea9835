"""The one inference path of evaluate, predict and the viewer: a model file's model with its settings.

A :class:`Predictor` holds what every prediction needs and nothing the caller could assemble
differently: the model on its device, the model file's eval normalisation
(:func:`~glioseg.data.batch_augment.eval_normaliser`) and preprocess pipeline, and the inference settings
(:class:`~glioseg.config.schema.InferenceParams`: those given, else the model file's). It predicts

- model-size images -> class labels (batched; flip test-time augmentation when ``tta``;
  threshold or argmax), the step the other two share;
- one case's original-size images -> the model's own resize -> labels -> the case's
  post-processing (what predict and the viewer show);
- cached arrays of many cases (:class:`SliceArrays`) -> labels post-processed case by case
  (what evaluate scores).

Given a :class:`~glioseg.model.checkpoint.ModelSet` (fold models), each member normalises the batch its own
way, and their sigmoid/softmax probabilities (each flip-averaged under TTA) are averaged before
the threshold or argmax and the post-processing, as nnU-Net ensembles its folds.

Training does not import this module: its validation and overlays call
:func:`inference.predict_labels` at probability 0.5 without TTA or post-processing, so editing
inference-only code never re-runs training.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from glioseg.config.sections import InferenceParams
from glioseg.data.batch_augment import Normaliser, eval_normaliser
from glioseg.data.cache import SliceArrays
from glioseg.data.context import stack_context
from glioseg.data.transforms import pipelines_from_dict
from glioseg.device import select_device
from glioseg.errors import DataError
from glioseg.formats.intensity import window_case
from glioseg.inference.forward import predict_labels
from glioseg.inference.postprocess import postprocess_case, postprocess_cases
from glioseg.model.checkpoint import LoadedModel, ModelSet

FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Sigmoid (one channel) or softmax class probabilities of (N,C,H,W) logits, in fp32."""
    logits = logits.float()
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def as_logits(mean: torch.Tensor) -> torch.Tensor:
    """Averaged probabilities back as logits (log-odds or log-probabilities), so ``labels_from_logits`` applies."""
    mean = mean.clamp(1e-7, 1 - 1e-7)
    return torch.logit(mean) if mean.shape[1] == 1 else torch.log(mean)


def flip_averaged_logits(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Logits of the class probabilities averaged over the four flips of ``batch`` (nnU-Net's mirroring)."""
    total: torch.Tensor | None = None
    for dims in FLIPS:
        logits = model(batch.flip(dims) if dims else batch)
        flipped_back = probabilities(logits.flip(dims) if dims else logits)
        total = flipped_back if total is None else total + flipped_back
    assert total is not None  # FLIPS is not empty
    return as_logits(total / len(FLIPS))


class FlipAveraged(torch.nn.Module):
    """``model`` under flip TTA: its forward is :func:`flip_averaged_logits` (4x the compute)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return flip_averaged_logits(self.model, batch)


class MemberAveraged(torch.nn.Module):
    """A model set as one network: uint8 batches in, each member's own normalisation, the members'
    probabilities averaged, logits out."""

    def __init__(self, networks: Sequence[torch.nn.Module], normalisers: Sequence[Normaliser]):
        super().__init__()
        self.networks = torch.nn.ModuleList(networks)
        self.normalisers = list(normalisers)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        total: torch.Tensor | None = None
        for network, normaliser in zip(self.networks, self.normalisers):
            normalised = normaliser.normalise(batch).contiguous(memory_format=torch.channels_last)
            member = probabilities(network(normalised))
            total = member if total is None else total + member
        assert total is not None  # a model set has at least two members
        return as_logits(total / len(self.networks))


class Unnormalised:
    """The :class:`~glioseg.data.batch_augment.Normaliser` before a :class:`MemberAveraged` network: none,
    since each member normalises for itself."""

    @staticmethod
    def normalise(images: torch.Tensor) -> torch.Tensor:
        return images


class Predictor:
    """A loaded model on its device with its eval normalisation, preprocessing and inference settings.

    ``loaded`` is one model file's model or a :class:`ModelSet`. ``inference`` overrides the model
    file's settings (``loaded.inference``, its training run's, the first member's for a set);
    ``device_setting`` names where ``device`` came from (``run.device``, ``--device``) for the
    error when it cannot be used.
    """

    def __init__(
        self,
        loaded: LoadedModel | ModelSet,
        device: str = "auto",
        inference: InferenceParams | None = None,
        batch_size: int = 32,
        device_setting: str = "run.device",
    ):
        self.loaded = loaded
        self.inference = inference if inference is not None else loaded.inference
        self.device = select_device(device, device_setting)
        members = loaded.members if isinstance(loaded, ModelSet) else (loaded,)
        networks = [member.model.to(self.device).eval() for member in members]
        if self.inference.tta:
            networks = [FlipAveraged(network) for network in networks]
        normalisers = [eval_normaliser(member.pipelines) for member in members]
        self.network: torch.nn.Module
        self.normaliser: Normaliser
        if len(members) == 1:
            self.network, self.normaliser = networks[0], normalisers[0]
        else:
            self.network, self.normaliser = MemberAveraged(networks, normalisers), Unnormalised()
        self.resize = pipelines_from_dict(loaded.pipelines)["preprocess"]
        self.batch_size = batch_size

    @property
    def slice_channels(self) -> int:
        """Channels of one input slice (the model's input channels without the context neighbours)."""
        in_channels = self.loaded.params.in_channels
        assert in_channels is not None  # a trained model's params have it filled from its dataset
        return in_channels // (2 * self.loaded.context + 1)

    def labels(self, images: np.ndarray) -> np.ndarray:
        """(N,H,W) uint8 class labels for uint8 images (N,H,W,C) at model size, not post-processed."""
        return predict_labels(
            self.network, images, self.normaliser, self.device, self.inference.threshold, self.batch_size
        )

    def preprocess(self, originals: Sequence[np.ndarray]) -> np.ndarray:
        """One case's original-size slices (in slice order) -> model size, through the model file's own
        preprocess pipeline, windowed over the case when the model's training windowed its patients, each
        stacked with its neighbours when the model reads context."""
        resized = np.stack([self.resize(image=image)["image"] for image in originals])
        return stack_context(window_case(resized, self.loaded.window), self.loaded.context)

    def predict_case(self, originals: Sequence[np.ndarray], case: str = "the case") -> np.ndarray:
        """Model-size (Z,H,W) labels of one case's original-size slices (in slice order), post-processed as a case.

        A context model reads each slice with its neighbours, and a windowing model scales a slice by
        its whole patient's intensities, so either refuses a case of one slice.
        """
        context, window = self.loaded.context, self.loaded.window
        if len(originals) < 2 and context:
            raise DataError(
                f"{case}: a single slice, but the model reads each slice with the {context} slice(s) "
                "above and below it (data.context); give the patient's folder of slices"
            )
        if len(originals) < 2 and window is not None:
            raise DataError(
                f"{case}: a single slice, but the model scales each slice by its patient's intensity "
                f"percentiles {list(window)} (data.window); give the patient's folder of slices"
            )
        return postprocess_case(self.labels(self.preprocess(originals)), self.inference.postprocess)

    def predict_arrays(self, arrays: SliceArrays) -> np.ndarray:
        """(N,H,W) labels of cached model-size slices of any cases, post-processed case by case."""
        labels = self.labels(arrays.images)
        return postprocess_cases(labels, arrays.patient, arrays.slice, self.inference.postprocess)
