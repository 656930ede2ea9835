import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from glioseg.data.borders import border_distance_sum
from glioseg.errors import ConfigError
from glioseg.training.losses import (
    SegmentationLoss,
    border_weights,
    class_frequency_weights,
    multiclass_soft_dice_loss,
    soft_dice_loss,
    weight_map,
    weighted_bce,
    weighted_cross_entropy,
)


def as_batch(array) -> torch.Tensor:
    """(H, W) -> (1, 1, H, W) float32 tensor."""
    return torch.as_tensor(np.asarray(array), dtype=torch.float32)[None, None]


# --- border_distance_sum ---------------------------------------------------------------------


def test_border_distance_sum_1d_three_blobs_uses_two_nearest():
    # Blobs at x = 0, 3, 8. Distances (to 0, to 3, to 8) and d1 + d2 = sum of the two smallest:
    # x=0: (0,3,8) -> 3   x=1: (1,2,7) -> 3   x=2: (2,1,6) -> 3   x=3: (3,0,5) -> 3
    # x=4: (4,1,4) -> 5   x=5: (5,2,3) -> 5   x=6: (6,3,2) -> 5   x=7: (7,4,1) -> 5
    # x=8: (8,5,0) -> 5
    mask = np.array([[1, 0, 0, 1, 0, 0, 0, 0, 1]], dtype=np.uint8)
    result = border_distance_sum(mask)
    assert result.dtype == np.float32
    assert result.shape == mask.shape
    np.testing.assert_array_equal(result, [[3, 3, 3, 3, 5, 5, 5, 5, 5]])


def test_border_distance_sum_2d_is_euclidean():
    # 3x5 mask, single-pixel blobs A at (0,0) and B at (2,4).
    # (0,4): |A| = 4, |B| = 2                       -> 6
    # (2,0): |A| = 2, |B| = 4                       -> 6
    # (1,2): |A| = sqrt(1+4), |B| = sqrt(1+4)       -> 2 sqrt(5)
    # (0,0): |A| = 0, |B| = sqrt(2^2 + 4^2)         -> 2 sqrt(5)
    # (1,1): |A| = sqrt(2), |B| = sqrt(1+9)         -> sqrt(2) + sqrt(10)
    mask = np.zeros((3, 5), dtype=np.uint8)
    mask[0, 0] = mask[2, 4] = 1
    result = border_distance_sum(mask)
    assert result[0, 4] == pytest.approx(6.0)
    assert result[2, 0] == pytest.approx(6.0)
    assert result[1, 2] == pytest.approx(2 * math.sqrt(5), rel=1e-6)
    assert result[0, 0] == pytest.approx(2 * math.sqrt(5), rel=1e-6)
    assert result[1, 1] == pytest.approx(math.sqrt(2) + math.sqrt(10), rel=1e-6)


def test_border_distance_sum_multi_pixel_blob_distance_is_zero_inside():
    # Blobs {x=0,1} and {x=5}. x=0: inside the first (0), 5 from the second -> 5;
    # x=1: inside the first, 4 from the second -> 4; x=3: 2 from both -> 4;
    # x=5: 4 from the nearest pixel of the first (x=1), inside the second -> 4.
    mask = np.array([[1, 1, 0, 0, 0, 1]], dtype=np.uint8)
    np.testing.assert_array_equal(border_distance_sum(mask), [[5, 4, 4, 4, 4, 4]])


@pytest.mark.parametrize(
    "mask",
    [
        np.zeros((4, 4), dtype=np.uint8),
        np.pad(np.ones((2, 2), dtype=np.uint8), 1),
        np.eye(4, dtype=np.uint8),  # diagonal pixels are one 8-connected region
    ],
    ids=["empty", "one-blob", "diagonal"],
)
def test_border_distance_sum_fewer_than_two_regions_is_inf_and_weights_zero(mask):
    result = border_distance_sum(mask)
    assert result.dtype == np.float32
    assert np.isposinf(result).all()
    np.testing.assert_array_equal(border_weights(result, w0=10.0, sigma=5.0), 0.0)


# --- border_weights / class_frequency_weights / weight_map -------------------------------------


def test_border_weights_numpy_and_torch_agree_with_formula():
    distances = np.array([0.0, 5.0, np.inf], dtype=np.float32)
    expected = [10.0, 10.0 * math.exp(-25 / 50), 0.0]  # w0 exp(-d^2 / (2 sigma^2)), sigma = 5
    np.testing.assert_allclose(border_weights(distances, w0=10.0, sigma=5.0), expected, rtol=1e-6)
    weights = border_weights(torch.from_numpy(distances), w0=10.0, sigma=5.0)
    assert isinstance(weights, torch.Tensor)
    np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-6)


def test_class_frequency_weights_quarter_positive():
    w_negative, w_positive = class_frequency_weights([0.75, 0.25])
    assert w_negative == pytest.approx(2 / 3)
    assert w_positive == pytest.approx(2.0)
    assert w_negative * 0.75 + w_positive * 0.25 == pytest.approx(1.0)


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_class_frequency_weights_single_class_is_unweighted(fraction):
    assert class_frequency_weights([1.0 - fraction, fraction]) == (1.0, 1.0)


def test_class_frequency_weights_rejects_out_of_range():
    with pytest.raises(ValueError, match="must lie in"):
        class_frequency_weights([-0.5, 1.5])


def test_weight_map_adds_class_and_border_terms():
    target = as_batch([[0, 1, 0]])
    distance_sum = as_batch([[np.inf, 0.0, 5.0]])
    weights = weight_map(target, distance_sum, w0=10.0, sigma=5.0, class_weights=(2 / 3, 2.0))
    expected = [[2 / 3, 2.0 + 10.0, 2 / 3 + 10.0 * math.exp(-0.5)]]
    np.testing.assert_allclose(weights[0, 0].numpy(), expected, rtol=1e-6)


# --- weighted_bce ------------------------------------------------------------------------------


def test_weighted_bce_with_unit_weights_is_plain_bce():
    logits = torch.tensor([[[[-2.0, 0.0], [1.5, 3.0]]]])
    target = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])
    plain = F.binary_cross_entropy_with_logits(logits, target)
    assert weighted_bce(logits, target, torch.ones_like(logits)).item() == pytest.approx(plain.item())


def test_weighted_bce_hand_value_and_linear_in_weights():
    logits = torch.zeros(1, 1, 2, 2)  # sigmoid = 0.5: BCE = ln 2 per pixel whatever the target
    target = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])
    assert weighted_bce(logits, target, torch.ones_like(logits)).item() == pytest.approx(math.log(2))
    assert weighted_bce(logits, target, torch.full_like(logits, 3.0)).item() == pytest.approx(3 * math.log(2))
    # Weights (1, 2, 3, 6) average 3: the loss is 3 ln 2 again.
    weights = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]]]])
    assert weighted_bce(logits, target, weights).item() == pytest.approx(3 * math.log(2))


def test_weighted_bce_is_stable_for_extreme_logits():
    logits = torch.tensor([[[[100.0, -100.0]]]])
    right = weighted_bce(logits, torch.tensor([[[[1.0, 0.0]]]]), torch.ones(1, 1, 1, 2))
    wrong = weighted_bce(logits, torch.tensor([[[[0.0, 1.0]]]]), torch.ones(1, 1, 1, 2))
    assert right.item() == pytest.approx(0.0, abs=1e-12)
    assert wrong.item() == pytest.approx(100.0)


# --- soft_dice_loss ----------------------------------------------------------------------------


def square_target(size: int = 16, start: int = 4, stop: int = 12) -> torch.Tensor:
    target = torch.zeros(1, 1, size, size)
    target[..., start:stop, start:stop] = 1.0
    return target


def test_soft_dice_loss_perfect_confident_prediction_is_zero():
    target = square_target()
    logits = torch.where(target > 0, 20.0, -20.0)
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_soft_dice_loss_disjoint_prediction_is_about_one():
    target = square_target()  # 64 px
    prediction = torch.zeros_like(target)
    prediction[..., 0:4, :] = 1.0  # 64 px in rows 0-3; the target lies in rows 4-11
    assert (prediction * target).sum() == 0
    logits = torch.where(prediction > 0, 20.0, -20.0)
    # Dice = (0 + 1) / (64 + 64 + 1) -> loss = 128 / 129.
    assert soft_dice_loss(logits, target).item() == pytest.approx(128 / 129, rel=1e-5)


def test_soft_dice_loss_hand_value_per_image_then_batch_mean():
    # Image 1: 4 of 16 px are tumour, p = 0.5 everywhere: overlap 2, sum(p) + sum(t) = 8 + 4,
    #          Dice = (2*2 + 1) / (12 + 1) = 5/13.
    # Image 2: empty truth, p = 0.5: Dice = (0 + 1) / (8 + 1) = 1/9.
    target = torch.zeros(2, 1, 4, 4)
    target[0, 0, :2, :2] = 1.0
    logits = torch.zeros(2, 1, 4, 4)
    expected = 1 - (5 / 13 + 1 / 9) / 2
    assert soft_dice_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_batch_soft_dice_is_one_dice_over_all_the_batch_pixels():
    # The batch of the test above as one image of 32 px: overlap 2, sum(p) = 16, sum(t) = 4,
    # Dice = (2*2 + 1) / (20 + 1) = 5/21; the empty slice's false positives join the denominator.
    target = torch.zeros(2, 1, 4, 4)
    target[0, 0, :2, :2] = 1.0
    logits = torch.zeros(2, 1, 4, 4)
    assert soft_dice_loss(logits, target, batch=True).item() == pytest.approx(1 - 5 / 21, rel=1e-6)
    single = logits[:1] + torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    assert soft_dice_loss(single, target[:1], batch=True).item() == pytest.approx(
        soft_dice_loss(single, target[:1]).item(), rel=1e-6
    )  # a batch of one: the same Dice


def test_segmentation_loss_batch_dice_reaches_both_dice_forms():
    target = torch.zeros(2, 1, 4, 4)
    target[0, 0, :2, :2] = 1.0
    distance = torch.full((2, 1, 4, 4), float("inf"))
    settings = dict(w0=10.0, sigma=5.0, class_weights=(1.0, 1.0))
    batched = SegmentationLoss("dice", **settings, batch_dice=True)
    per_image = SegmentationLoss("dice", **settings)
    assert batched(torch.zeros(2, 1, 4, 4), target, distance).item() == pytest.approx(1 - 5 / 21, rel=1e-6)
    # Two classes, uniform softmax (p = 0.5 for the tumour class): the same sums as the sigmoid.
    labels = target.to(torch.uint8)
    uniform = torch.zeros(2, 2, 4, 4)
    assert batched(uniform, labels, distance).item() == pytest.approx(1 - 5 / 21, rel=1e-6)
    assert per_image(uniform, labels, distance).item() == pytest.approx(1 - (5 / 13 + 1 / 9) / 2, rel=1e-6)


def test_soft_dice_loss_empty_truth_rewards_empty_prediction():
    target = torch.zeros(1, 1, 4, 4)
    empty = soft_dice_loss(torch.full((1, 1, 4, 4), -20.0), target)
    full = soft_dice_loss(torch.full((1, 1, 4, 4), 20.0), target)
    assert empty.item() == pytest.approx(0.0, abs=1e-6)
    assert full.item() == pytest.approx(16 / 17, rel=1e-5)  # Dice = 1 / (16 + 1)


# --- SegmentationLoss --------------------------------------------------------------------------


def batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 1, 8, 8, generator=generator)
    target = (torch.rand(2, 1, 8, 8, generator=generator) > 0.7).float()
    masks = target[:, 0].numpy().astype(np.uint8)
    distance_sum = torch.from_numpy(np.stack([border_distance_sum(m) for m in masks]))[:, None]
    return logits, target, distance_sum


def test_combined_is_wbce_plus_dice():
    logits, target, distance_sum = batch()
    settings = dict(w0=10.0, sigma=5.0, class_weights=(2 / 3, 2.0))
    wbce = SegmentationLoss("wbce", **settings)(logits, target, distance_sum)
    dice = SegmentationLoss("dice", **settings)(logits, target, distance_sum)
    combined = SegmentationLoss("combined", **settings)(logits, target, distance_sum)
    weights = weight_map(target, distance_sum, **settings)
    assert wbce.item() == pytest.approx(weighted_bce(logits, target, weights).item())
    assert dice.item() == pytest.approx(soft_dice_loss(logits, target).item())
    assert combined.item() == pytest.approx(wbce.item() + dice.item())


@pytest.mark.parametrize("name", ["wbce", "dice", "combined"])
def test_loss_gradients_flow(name):
    logits, target, distance_sum = batch()
    logits.requires_grad_(True)
    loss = SegmentationLoss(name, w0=10.0, sigma=5.0, class_weights=(1.0, 1.0))(logits, target, distance_sum)
    assert loss.dim() == 0
    loss.backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["wbce", "dice", "combined"])
def test_loss_is_float32_under_autocast(name):
    _, target, distance_sum = batch()
    conv = torch.nn.Conv2d(1, 1, 3, padding=1)
    images = torch.randn(2, 1, 8, 8)
    loss_fn = SegmentationLoss(name, w0=10.0, sigma=5.0, class_weights=(2 / 3, 2.0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(images)
        loss = loss_fn(logits, target, distance_sum)
    assert logits.dtype == torch.bfloat16
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    loss.backward()
    assert conv.weight.grad is not None


def test_unknown_loss_name_is_a_config_error():
    with pytest.raises(ConfigError) as error:
        SegmentationLoss("x", w0=10.0, sigma=5.0, class_weights=(1.0, 1.0))
    assert str(error.value) == "params.yaml: key 'loss': unknown loss 'x' (expected wbce, dice or combined)"


def test_class_frequency_weights_balance_every_class():
    weights = class_frequency_weights([0.5, 0.25, 0.25])
    assert weights == pytest.approx((2 / 3, 4 / 3, 4 / 3))
    assert sum(w * f for w, f in zip(weights, [0.5, 0.25, 0.25])) == pytest.approx(1.0)
    assert class_frequency_weights([1.0, 0.0, 0.0]) == (1.0, 1.0, 1.0)


def test_multiclass_cross_entropy_of_uniform_logits_is_log_c():
    logits = torch.zeros(2, 4, 3, 3)
    labels = torch.randint(0, 4, (2, 3, 3))
    loss = weighted_cross_entropy(logits, labels, torch.ones(2, 3, 3))
    assert float(loss) == pytest.approx(np.log(4), rel=1e-6)
    doubled = weighted_cross_entropy(logits, labels, torch.full((2, 3, 3), 2.0))
    assert float(doubled) == pytest.approx(2 * np.log(4), rel=1e-6)


def one_hot_logits(labels: torch.Tensor, classes: int, scale: float = 30.0) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, classes).permute(0, 3, 1, 2).float() * scale


def test_multiclass_soft_dice_is_zero_for_perfect_and_known_for_wrong_predictions():
    labels = torch.tensor([[[0, 1], [2, 3]]])
    assert float(multiclass_soft_dice_loss(one_hot_logits(labels, 4), labels, eps=0.0)) == pytest.approx(0.0, abs=1e-6)
    # Every tumour pixel predicted as background: each tumour class has overlap 0, total 1 -> Dice 0.
    wrong = one_hot_logits(torch.zeros_like(labels), 4)
    assert float(multiclass_soft_dice_loss(wrong, labels, eps=0.0)) == pytest.approx(1.0, abs=1e-6)
    # Absent class predicted absent counts as Dice 1 thanks to the smoothing.
    only_oedema = torch.tensor([[[0, 2], [2, 0]]])
    assert float(multiclass_soft_dice_loss(one_hot_logits(only_oedema, 4), only_oedema)) == pytest.approx(0.0, abs=1e-6)


def test_segmentation_loss_switches_to_softmax_for_several_channels():
    labels = torch.tensor([[[[0, 1], [2, 3]]]], dtype=torch.uint8)
    distance = torch.full((1, 1, 2, 2), float("inf"))
    loss = SegmentationLoss("combined", w0=10.0, sigma=5.0, class_weights=(1.0, 1.0, 1.0, 1.0))
    perfect = float(loss(one_hot_logits(labels[:, 0].long(), 4), labels, distance))
    uniform = float(loss(torch.zeros(1, 4, 2, 2), labels, distance))
    assert perfect == pytest.approx(0.0, abs=1e-4)
    # Dice per tumour class: (2 * 0.25 + 1) / (4 * 0.25 + 1 + 1) = 0.5.
    assert uniform == pytest.approx(np.log(4) + 0.5, rel=1e-5)
