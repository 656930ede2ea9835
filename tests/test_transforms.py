import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from glioseg.config.sections import AugmentParams
from glioseg.data.batch_augment import BatchAugment
from glioseg.data.transforms import build_pipelines, channel_stats, pipelines_from_dict, pipelines_to_dict
from glioseg.errors import DataError


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)


def test_channel_stats_match_numpy(images):
    mean, std = channel_stats(images)
    expected = images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(mean, expected.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(std, expected.std(axis=0), atol=1e-6)


def test_pipelines_round_trip_through_json(images):
    pipelines = build_pipelines(AugmentParams(image_size=32, hflip=0.25), images)
    restored = pipelines_from_dict(pipelines_to_dict(pipelines))
    assert [type(t).__name__ for t in restored["train"].transforms] == [
        "HorizontalFlip",
        "VerticalFlip",
        "RandomRotate90",
        "Normalize",
    ]
    assert restored["train"].transforms[0].p == 0.25
    assert [type(t).__name__ for t in restored["eval"].transforms] == ["Normalize"]
    assert type(restored["preprocess"].transforms[0]).__name__ == "Resize"


def test_disabled_augmentation_keeps_only_normalisation(images):
    pipelines = build_pipelines(AugmentParams(image_size=32, enabled=False), images)
    augment = BatchAugment.from_pipeline(pipelines["train"])
    assert (augment.hflip, augment.vflip, augment.rotate90) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (
            A.GaussianBlur(p=0.5),
            "augment.json: the train pipeline's step GaussianBlur is not reproduced by the "
            "batched training augmentation (supported: RandomCrop, HorizontalFlip, VerticalFlip, "
            "RandomRotate90, Affine, RandomBrightnessContrast, Normalize)",
        ),
        (A.HorizontalFlip(p=0.5), "step HorizontalFlip appears twice"),
    ],
)
def test_a_train_step_the_batched_augmentation_does_not_reproduce_is_refused(images, step, message):
    pipeline = build_pipelines(AugmentParams(image_size=32), images)["train"]
    extended = A.Compose([step, *pipeline.transforms])
    # ... also after a round trip through augment.json, where an edited pipeline would come from
    restored = pipelines_from_dict(pipelines_to_dict({"preprocess": extended, "train": extended, "eval": extended}))
    for candidate in (extended, restored["train"]):
        with pytest.raises(DataError) as raised:
            BatchAugment.from_pipeline(candidate)
        assert message in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"max_pixel_value": 1.0}, "max_pixel_value=1.0"),
        ({"normalization": "image"}, "normalization='image'"),
        ({"p": 0.5}, "p=0.5"),
    ],
)
def test_a_normalize_the_batched_augmentation_does_not_reproduce_is_refused(settings, named):
    normalize = A.Normalize(**{"mean": (0.5, 0.5, 0.5), "std": (0.2, 0.2, 0.2), "max_pixel_value": 255.0, **settings})
    with pytest.raises(
        DataError,
        match=f"the train pipeline's Normalize has {named}; the batched training "
        "augmentation reproduces only max_pixel_value=255.0",
    ):
        BatchAugment.from_pipeline(A.Compose([A.HorizontalFlip(p=0.5), normalize]))


def test_batch_normalise_equals_albumentations(images):
    pipeline = build_pipelines(AugmentParams(image_size=32), images)["eval"]
    expected = np.stack([pipeline(image=img)["image"] for img in images])
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2)
    got = BatchAugment.from_pipeline(pipeline).normalise(tensor).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize(
    ("probabilities", "reference"),
    [
        ((1.0, 0.0, 0.0), A.HorizontalFlip(p=1.0)),
        ((0.0, 1.0, 0.0), A.VerticalFlip(p=1.0)),
    ],
)
def test_batch_flips_equal_albumentations(images, probabilities, reference):
    augment = BatchAugment(*probabilities, mean=(0, 0, 0), std=(1, 1, 1))
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2)
    mask = torch.from_numpy(images[..., :1].copy()).permute(0, 3, 1, 2)
    out_image, out_mask = augment.geometry([tensor, mask], torch.Generator().manual_seed(0))
    expected = np.stack([reference(image=img)["image"] for img in images])
    np.testing.assert_array_equal(out_image.permute(0, 2, 3, 1).numpy(), expected)
    np.testing.assert_array_equal(out_mask[:, 0].numpy(), expected[..., 0])


def test_rotation_is_a_quarter_turn_shared_by_all_targets(images):
    augment = BatchAugment(0.0, 0.0, 1.0, mean=(0, 0, 0), std=(1, 1, 1))
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2)
    rotated, again = augment.geometry([tensor, tensor.clone()], torch.Generator().manual_seed(5))
    assert torch.equal(rotated, again)
    for original, out in zip(tensor, rotated):
        assert any(torch.equal(torch.rot90(original, k, dims=(-2, -1)), out) for k in range(4))
    turned = sum(not torch.equal(o, r) for o, r in zip(tensor, rotated))
    assert turned >= 3  # with p=1 three of four draws turn the slice (k=0 is allowed)


def test_geometry_is_seeded(images):
    augment = BatchAugment(0.5, 0.5, 0.5, mean=(0, 0, 0), std=(1, 1, 1))
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2)
    first = augment.geometry([tensor], torch.Generator().manual_seed(9))[0]
    second = augment.geometry([tensor], torch.Generator().manual_seed(9))[0]
    assert torch.equal(first, second)


def test_crop_pipeline_crops_first_and_its_batched_twin_crops_the_same_size(images):
    pipelines = build_pipelines(AugmentParams(image_size=32, crop=32), images)
    restored = pipelines_from_dict(pipelines_to_dict(pipelines))
    assert [type(t).__name__ for t in restored["train"].transforms] == [
        "RandomCrop",
        "HorizontalFlip",
        "VerticalFlip",
        "RandomRotate90",
        "Normalize",
    ]
    assert BatchAugment.from_pipeline(restored["train"]).crop == (32, 32)
    assert BatchAugment.from_pipeline(build_pipelines(AugmentParams(image_size=32), images)["train"]).crop is None
    assert [type(t).__name__ for t in restored["eval"].transforms] == ["Normalize"]
    no_augmentation = build_pipelines(AugmentParams(image_size=32, crop=32, enabled=False), images)["train"]
    assert [type(t).__name__ for t in no_augmentation.transforms] == ["Normalize"]


def test_a_random_crop_the_batched_augmentation_does_not_reproduce_is_refused():
    normalize = A.Normalize(mean=(0.5,) * 3, std=(0.2,) * 3)
    for crop in (A.RandomCrop(32, 32, p=0.5), A.RandomCrop(32, 32, pad_if_needed=True), A.RandomCrop(32, 64)):
        with pytest.raises(
            DataError,
            match="RandomCrop has p=.*; the batched training augmentation reproduces "
            "only p=1.0, pad_if_needed=False, square crops",
        ):
            BatchAugment.from_pipeline(A.Compose([crop, normalize]))


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([A.HorizontalFlip(p=0.5), A.RandomCrop(32, 32)], "RandomCrop is not its first step"),
        ([A.RandomBrightnessContrast(p=0.5)], "Normalize is not its last step"),
    ],
)
def test_steps_out_of_the_mirrored_order_are_refused(steps, message):
    normalize = A.Normalize(mean=(0.5,) * 3, std=(0.2,) * 3)
    ordered = [*steps, normalize] if "first" in message else [normalize, *steps]
    with pytest.raises(DataError, match=message):
        BatchAugment.from_pipeline(A.Compose(ordered))


def test_random_crops_are_windows_at_seeded_offsets_shared_by_all_targets():
    augment = BatchAugment(0.0, 0.0, 0.0, mean=(0, 0, 0), std=(1, 1, 1), crop=(8, 12))
    # Every pixel value is unique, so a window's top-left value gives its offset.
    tensor = torch.arange(40 * 3 * 16 * 20).view(40, 3, 16, 20)
    cropped, mask = augment.geometry([tensor, tensor[:, :1].clone()], torch.Generator().manual_seed(3))
    assert cropped.shape == (40, 3, 8, 12) and mask.shape == (40, 1, 8, 12)
    offsets = set()
    for sample, (original, window) in enumerate(zip(tensor, cropped)):
        top, left = divmod(int(window[0, 0, 0]) - sample * 3 * 16 * 20, 20)
        assert torch.equal(window, original[:, top : top + 8, left : left + 12])
        assert torch.equal(mask[sample], window[:1])
        offsets.add((top, left))
    tops, lefts = {top for top, _ in offsets}, {left for _, left in offsets}
    assert tops == set(range(9)) and lefts == set(range(9))  # every offset, the last one included
    assert len(offsets) > 20  # drawn per sample, not once per batch
    again = augment.geometry([tensor], torch.Generator().manual_seed(3))[0]
    assert torch.equal(again, cropped)


def test_a_crop_larger_than_the_slices_is_one_line():
    augment = BatchAugment(0.0, 0.0, 0.0, mean=(0, 0, 0), std=(1, 1, 1), crop=(64, 64))
    with pytest.raises(DataError, match=r"RandomCrop \(64x64\) is larger than the training slices \(32x32\)"):
        augment.geometry([torch.zeros(2, 3, 32, 32)], torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("alpha", "beta"), [(1.2, 0.1), (0.8, -0.1), (1.0, 0.0), (1.15, -0.05)])
def test_batch_brightness_contrast_equals_albumentations(images, alpha, beta):
    """Limits of zero width fix alpha and beta, so both sides apply the same change to every slice."""
    reference = A.RandomBrightnessContrast(brightness_limit=(beta, beta), contrast_limit=(alpha - 1, alpha - 1), p=1.0)
    augment = BatchAugment.from_pipeline(A.Compose([reference, A.Normalize(mean=(0.5,) * 3, std=(0.2,) * 3)]))
    assert augment.brightness_contrast == 1.0
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2)
    got = augment.adjust_brightness_contrast(tensor, torch.Generator().manual_seed(0))
    expected = np.stack([reference(image=image)["image"] for image in images])
    assert got.dtype == torch.uint8
    np.testing.assert_array_equal(got.permute(0, 2, 3, 1).numpy(), expected)


def test_brightness_contrast_changes_some_slices_by_seeded_draws_within_the_limits():
    augment = BatchAugment(
        0.0,
        0.0,
        0.0,
        mean=(0, 0, 0),
        std=(1, 1, 1),
        brightness_contrast=0.5,
        brightness_limit=(-0.1, 0.1),
        contrast_limit=(-0.2, 0.2),
    )
    flat = torch.full((200, 3, 4, 4), 100, dtype=torch.uint8)
    out = augment.adjust_brightness_contrast(flat, torch.Generator().manual_seed(1))
    values = out[:, 0, 0, 0].float()
    changed = (values != 100).sum().item()
    assert 70 <= changed <= 130  # about half of 200 at p = 0.5
    assert values.min() >= 100 * 0.8 - 25.5 - 1 and values.max() <= 100 * 1.2 + 25.5
    assert all(torch.equal(sample, sample[0, 0, 0].expand_as(sample)) for sample in out)  # one draw per slice
    assert torch.equal(out, augment.adjust_brightness_contrast(flat, torch.Generator().manual_seed(1)))


def test_brightness_contrast_off_draws_nothing_and_leaves_images_alone(images):
    augment = BatchAugment(0.5, 0.5, 0.5, mean=(0, 0, 0), std=(1, 1, 1))
    tensor, generator = torch.from_numpy(images).permute(0, 3, 1, 2), torch.Generator().manual_seed(4)
    before = generator.get_state()
    assert augment.adjust_brightness_contrast(tensor, generator) is tensor
    assert torch.equal(generator.get_state(), before)


def test_a_brightness_contrast_the_batched_augmentation_does_not_reproduce_is_refused():
    normalize = A.Normalize(mean=(0.5,) * 3, std=(0.2,) * 3)
    refused = (A.RandomBrightnessContrast(brightness_by_max=False), A.RandomBrightnessContrast(ensure_safe_range=True))
    for step in refused:
        with pytest.raises(
            DataError,
            match="RandomBrightnessContrast has brightness_by_max=.*; the batched training "
            "augmentation reproduces only brightness_by_max=True",
        ):
            BatchAugment.from_pipeline(A.Compose([step, normalize]))


def test_brightness_contrast_joins_the_train_pipeline_only_when_its_probability_is_set(images):
    names = [
        type(t).__name__
        for t in build_pipelines(AugmentParams(image_size=32, brightness_contrast=0.3, contrast_limit=0.1), images)[
            "train"
        ].transforms
    ]
    assert names == ["HorizontalFlip", "VerticalFlip", "RandomRotate90", "RandomBrightnessContrast", "Normalize"]
    restored = BatchAugment.from_pipeline(
        pipelines_from_dict(
            pipelines_to_dict(
                build_pipelines(AugmentParams(image_size=32, brightness_contrast=0.3, contrast_limit=0.1), images)
            )
        )["train"]
    )
    assert (restored.brightness_contrast, restored.contrast_limit, restored.brightness_limit) == (
        0.3,
        (-0.1, 0.1),
        (-0.2, 0.2),
    )


def _reference_affine(angle: float, scale: float, **settings) -> A.Affine:
    """An A.Affine whose ranges are single values, so every sample gets the same warp."""
    chosen = dict(
        rotate=(angle, angle),
        scale=(scale, scale),
        keep_ratio=True,
        interpolation=cv2.INTER_LINEAR,
        mask_interpolation=cv2.INTER_NEAREST,
        border_mode=cv2.BORDER_CONSTANT,
        fill=0,
        fill_mask=0,
        p=1.0,
    )
    return A.Affine(**{**chosen, **settings})


@pytest.fixture
def tumour_slices():
    """Four 64 px slices with a bright off-centre block and its mask, on scanner-like noise."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 30, size=(4, 64, 64, 3), dtype=np.uint8)
    images[:, 10:40, 20:30] += 200
    masks = np.zeros((4, 64, 64), dtype=np.uint8)
    masks[:, 10:40, 20:30] = 1
    return images, masks


@pytest.mark.parametrize(("angle", "scale"), [(30.0, 1.2), (-20.0, 0.9), (90.0, 1.0), (7.5, 1.05)])
def test_batch_affine_equals_albumentations(tumour_slices, angle, scale):
    images, masks = tumour_slices
    reference = _reference_affine(angle, scale)
    augment = BatchAugment.from_pipeline(A.Compose([reference, A.Normalize(mean=(0.5,) * 3, std=(0.2,) * 3)]))
    assert (augment.affine, augment.rotate_limit, augment.scale_limit) == (1.0, (angle, angle), (scale, scale))
    tensors = [torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(masks)[:, None]]
    got_images, got_masks = augment.geometry(tensors, torch.Generator().manual_seed(0))
    expected = [reference(image=image, mask=mask) for image, mask in zip(images, masks)]
    assert got_images.dtype == torch.uint8 and got_masks.dtype == torch.uint8
    difference = np.abs(got_images.permute(0, 2, 3, 1).numpy().astype(int) - np.stack([e["image"] for e in expected]))
    # cv2 interpolates in fixed point: a rare pixel is one grey level off torch's float bilinear.
    assert difference.max() <= 1 and (difference == 0).mean() > 0.999
    np.testing.assert_array_equal(got_masks[:, 0].numpy(), np.stack([e["mask"] for e in expected]))


def test_affine_distance_maps_are_infinite_outside_the_slice_and_zoom_inside():
    augment = BatchAugment(
        0.0, 0.0, 0.0, mean=(0, 0, 0), std=(1, 1, 1), affine=1.0, rotate_limit=(45.0, 45.0), scale_limit=(0.5, 0.5)
    )
    images = torch.full((2, 3, 32, 32), 100, dtype=torch.uint8)
    distance = torch.full((2, 1, 32, 32), 4.0, dtype=torch.float16)
    warped_images, warped = augment.geometry([images, distance], torch.Generator().manual_seed(0))
    outside = torch.isinf(warped)
    assert warped.dtype == torch.float16
    assert outside[:, :, 0, 0].all() and not outside[:, :, 16, 16].any()  # corners come from outside at half size
    assert torch.equal(warped[~outside], torch.full_like(warped[~outside], 2.0))  # distances halve with the slice
    assert torch.equal(warped_images[:, :, 16, 16], images[:, :, 16, 16]) and (warped_images[:, :, 0, 0] == 0).all()


def test_affine_warps_about_its_probability_of_samples_by_seeded_draws():
    augment = BatchAugment(
        0.0, 0.0, 0.0, mean=(0, 0, 0), std=(1, 1, 1), affine=0.5, rotate_limit=(-15.0, 15.0), scale_limit=(0.9, 1.1)
    )
    stripes = torch.zeros((200, 1, 32, 32), dtype=torch.uint8)
    stripes[:, :, :, ::4] = 255
    first = augment.geometry([stripes], torch.Generator().manual_seed(2))[0]
    changed = (first != stripes).flatten(1).any(dim=1).sum().item()
    assert 70 <= changed <= 130  # about half of 200 at p = 0.5
    assert torch.equal(first, augment.geometry([stripes], torch.Generator().manual_seed(2))[0])


@pytest.mark.parametrize(
    ("settings", "shown"),
    [
        ({"shear": (5, 5)}, "shear="),
        ({"translate_px": (2, 2)}, "translate_px="),
        ({"keep_ratio": False}, "keep_ratio="),
        ({"border_mode": cv2.BORDER_REFLECT_101}, "border_mode=4"),
        ({"interpolation": cv2.INTER_CUBIC}, "interpolation=2"),
    ],
)
def test_an_affine_the_batched_augmentation_does_not_reproduce_is_refused(settings, shown):
    step = _reference_affine(10.0, 1.0, **settings)
    normalize = A.Normalize(mean=(0.5,) * 3, std=(0.2,) * 3)
    with pytest.raises(
        DataError,
        match=rf"augment.json: the train pipeline's Affine has .*{shown}.*; the batched "
        "training augmentation reproduces only rotation and a positive isotropic zoom",
    ):
        BatchAugment.from_pipeline(A.Compose([step, normalize]))


def test_a_zero_zoom_and_an_affine_out_of_the_batched_order_are_refused():
    normalize = A.Normalize(mean=(0.5,) * 3, std=(0.2,) * 3)
    with pytest.raises(DataError, match=r"Affine has scale=.*reproduces only rotation and a positive isotropic zoom"):
        BatchAugment.from_pipeline(A.Compose([_reference_affine(10.0, 0.0), normalize]))
    with pytest.raises(DataError, match="HorizontalFlip, RandomRotate90 comes after Affine"):
        BatchAugment.from_pipeline(
            A.Compose([_reference_affine(10.0, 1.0), A.HorizontalFlip(), A.RandomRotate90(), normalize])
        )
    with pytest.raises(DataError, match="RandomBrightnessContrast comes before Affine"):
        BatchAugment.from_pipeline(A.Compose([A.RandomBrightnessContrast(), _reference_affine(10.0, 1.0), normalize]))


def test_affine_joins_the_train_pipeline_only_when_its_probability_is_set(images):
    default = build_pipelines(AugmentParams(image_size=32), images)["train"]
    assert "Affine" not in [type(t).__name__ for t in default.transforms]
    params = AugmentParams(image_size=32, affine=0.4, rotate_limit=20, scale_limit=0.15, brightness_contrast=0.5)
    pipelines = pipelines_from_dict(pipelines_to_dict(build_pipelines(params, images)))
    assert [type(t).__name__ for t in pipelines["train"].transforms] == [
        "HorizontalFlip",
        "VerticalFlip",
        "RandomRotate90",
        "Affine",
        "RandomBrightnessContrast",
        "Normalize",
    ]
    restored = BatchAugment.from_pipeline(pipelines["train"])
    assert (restored.affine, restored.rotate_limit, restored.scale_limit) == (0.4, (-20.0, 20.0), (0.85, 1.15))
