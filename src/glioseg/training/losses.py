"""Segmentation losses from logits: binary (one sigmoid channel) or multi-class (softmax).

The weighted BCE follows Ronneberger et al. (2015), U-Net, eq. 2::

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))

``w_c`` balances class frequencies and the second term stresses the thin background gaps
between neighbouring tumour regions; ``d1``/``d2`` are the distances to the nearest and
second-nearest region (of any tumour class). With C > 1 output channels the weighted term is the
pixel-wise softmax cross-entropy of the paper itself, and Dice is averaged over tumour classes.
``d1 + d2`` depends only on the mask, so the cache stage computes it once per slice
(:func:`border_distance_sum`) and training only evaluates the exponential.

Every loss casts logits to float32 first, so it is safe inside ``torch.autocast``.
"""

from __future__ import annotations

from typing import TypeVar, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glioseg.config.sections import LossName
from glioseg.errors import ConfigError

LOSS_NAMES: tuple[str, ...] = get_args(LossName)

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, Tensor)


def border_weights(distance_sum: ArrayOrTensor, w0: float, sigma: float) -> ArrayOrTensor:
    """``w0 * exp(-ds**2 / (2 sigma**2))`` for a numpy array or a tensor; ``inf`` gives 0."""
    exp = torch.exp if isinstance(distance_sum, Tensor) else np.exp
    return w0 * exp(-(distance_sum**2) / (2.0 * sigma**2))


def class_frequency_weights(fractions: list[float]) -> tuple[float, ...]:
    """Per-class weights inversely proportional to class frequency, mean pixel weight 1.

    With K classes of pixel fractions ``p_k``: ``w_k = 1 / (K p_k)``, so ``sum_k w_k p_k = 1``
    and every class carries the same share of the total weight. When a class is absent the
    weights are all 1.0 (no balancing is defined).
    """
    fractions = [float(f) for f in fractions]
    if any(not 0.0 <= f <= 1.0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"class fractions must lie in [0, 1] and sum to 1, got {fractions}")
    if min(fractions) == 0.0:
        return tuple(1.0 for _ in fractions)
    return tuple(1.0 / (len(fractions) * f) for f in fractions)


def weight_map(
    target: Tensor,
    distance_sum: Tensor,
    *,
    w0: float,
    sigma: float,
    class_weights: tuple[float, ...],
) -> Tensor:
    """Per-pixel weights: the class weight of the pixel's true class (labels) plus the border term.

    The class weight is picked by comparisons with Python numbers rather than from a lookup tensor:
    building that tensor on a GPU is a blocking host-to-device copy, a synchronisation every step.
    """
    weights = border_weights(distance_sum.float(), w0, sigma)
    for label, weight in enumerate(class_weights):
        weights = weights + weight * (target == label)
    return weights


def weighted_bce(logits: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """Mean over all pixels of ``weights * BCE(sigmoid(logits), target)``, computed from logits."""
    per_pixel = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    return (weights.float() * per_pixel).mean()


def dice_loss_of(probabilities: Tensor, target: Tensor, channels: bool, batch: bool, eps: float) -> Tensor:
    """``1 -`` the mean smoothed Dice of (B,C,H,W) ``probabilities`` against ``target``.

    Sums run over each image's pixels, with ``channels`` per channel, with ``batch`` over the
    batch's images as well.
    """
    pixel_dims = tuple(range(2 if channels else 1, probabilities.dim()))
    sum_dims = ((0,) if batch else ()) + pixel_dims
    overlap = (probabilities * target).sum(sum_dims)
    total = probabilities.sum(sum_dims) + target.sum(sum_dims)
    return 1.0 - ((2.0 * overlap + eps) / (total + eps)).mean()


def soft_dice_loss(logits: Tensor, target: Tensor, eps: float = 1.0, batch: bool = False) -> Tensor:
    """``1 - soft Dice``, Dice computed per image over its pixels, then averaged over the batch.

    ``Dice = (2 sum(p t) + eps) / (sum(p) + sum(t) + eps)``. The smoothing ``eps`` keeps an image
    with empty truth defined: predicting (almost) nothing there scores Dice ~ 1 (loss ~ 0), and
    predicting tumour is penalised, where unsmoothed Dice would be 0/0.

    With ``batch`` the sums run over all the batch's pixels at once, one Dice per batch
    (nnU-Net's ``batch_dice``): a tumour-free slice then adds its false positives to the batch's
    denominator, as a patient's tumour-free slices do to the per-patient Dice it is evaluated by,
    instead of scoring 0 or 1 on its own.
    """
    return dice_loss_of(torch.sigmoid(logits.float()), target.float(), channels=False, batch=batch, eps=eps)


def weighted_cross_entropy(logits: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
    """Mean over all pixels of ``weights * CE(softmax(logits), labels)``; (B,C,H,W) logits, (B,H,W) labels."""
    per_pixel = F.cross_entropy(logits.float(), labels.long(), reduction="none")
    return (weights.float() * per_pixel).mean()


def multiclass_soft_dice_loss(logits: Tensor, labels: Tensor, eps: float = 1.0, batch: bool = False) -> Tensor:
    """``1 - soft Dice`` of the softmax against one-hot labels, per image and tumour class, averaged.

    Background (class 0) is left out, as in the BraTS regions; ``eps`` smooths each class's Dice as
    in :func:`soft_dice_loss`, so a class absent from an image and not predicted scores ~1. With
    ``batch``, one Dice per tumour class over all the batch's pixels, as in :func:`soft_dice_loss`.
    """
    classes = logits.shape[1]
    probabilities = torch.softmax(logits.float(), dim=1)[:, 1:]
    one_hot = F.one_hot(labels.long(), classes).permute(0, 3, 1, 2)[:, 1:].float()
    return dice_loss_of(probabilities, one_hot, channels=True, batch=batch, eps=eps)


class SegmentationLoss(nn.Module):
    """The training loss chosen by params ``loss``: ``wbce``, ``dice`` or ``combined`` (their sum).

    ``w0``, ``sigma`` and ``class_weights`` (one per class: 2 for binary masks) configure the
    weight map of the cross-entropy term; the Dice term ignores them and ``distance_sum``, and
    ``batch_dice`` makes it one Dice over the whole batch instead of a mean over its images. The
    logits' channel count decides the form: 1 = sigmoid BCE and Dice, C > 1 = softmax
    cross-entropy and Dice over tumour classes.
    """

    def __init__(
        self, name: str, w0: float, sigma: float, class_weights: tuple[float, ...], batch_dice: bool = False
    ) -> None:
        super().__init__()
        if name not in LOSS_NAMES:
            raise ConfigError(
                f"params.yaml: key 'loss': unknown loss '{name}' (expected {', '.join(LOSS_NAMES[:-1])} or "
                f"{LOSS_NAMES[-1]})"
            )
        self.name = name
        self.w0 = w0
        self.sigma = sigma
        self.class_weights = class_weights
        self.batch_dice = batch_dice

    def forward(self, logits: Tensor, target: Tensor, distance_sum: Tensor) -> Tensor:
        """The loss of (B,C,H,W) ``logits`` against (B,1,H,W) class labels with their ``d1 + d2`` maps."""
        multiclass = logits.shape[1] > 1
        labels = target[:, 0] if multiclass else target
        terms = []
        if self.name in ("wbce", "combined"):
            weights = weight_map(
                labels,
                distance_sum[:, 0] if multiclass else distance_sum,
                w0=self.w0,
                sigma=self.sigma,
                class_weights=self.class_weights,
            )
            cross_entropy = weighted_cross_entropy if multiclass else weighted_bce
            terms.append(cross_entropy(logits, labels, weights))
        if self.name in ("dice", "combined"):
            dice = multiclass_soft_dice_loss if multiclass else soft_dice_loss
            terms.append(dice(logits, labels, batch=self.batch_dice))
        return torch.stack(terms).sum()

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, w0={self.w0}, sigma={self.sigma}, class_weights={self.class_weights}, "
            f"batch_dice={self.batch_dice}"
        )
