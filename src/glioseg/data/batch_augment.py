"""The train pipeline on whole batches of tensors (:class:`BatchAugment`), and the normalisation predictions apply.

Running albumentations per sample costs more than a small U-Net step on a CPU, so the training
loop applies the *same* train pipeline (:mod:`glioseg.data.transforms`) to whole batches of tensors
on the device, its probabilities and statistics read from the serialized pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, cast

import albumentations as A
import cv2
import torch
import torch.nn.functional as F

from glioseg.data.transforms import pipelines_from_dict
from glioseg.errors import DataError


class Normaliser(Protocol):
    """What a prediction applies to a uint8 (N,C,H,W) batch before the network."""

    def normalise(self, images: torch.Tensor) -> torch.Tensor: ...


def standardise(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (N,C,H,W) -> float, (x/255 - mean) / std per channel, like A.Normalize."""
    mean_ = host_to_device(torch.tensor(mean).view(1, -1, 1, 1), images.device)
    std_ = host_to_device(torch.tensor(std).view(1, -1, 1, 1), images.device)
    return (images.float() / 255.0 - mean_) / std_


@dataclass(frozen=True)
class Normalise:
    """A pipeline's standard normalisation on whole batches of tensors."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return standardise(images, self.mean, self.std)


def eval_normaliser(pipelines: dict[str, Any]) -> Normalise:
    """The serialized eval pipeline's normalisation: what every prediction applies."""
    checked = BatchAugment.from_pipeline(pipelines_from_dict(pipelines)["eval"])
    return Normalise(checked.mean, checked.std)


def host_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device`` without making the host wait for the device.

    A blocking copy from pageable memory synchronises the CUDA stream, so one per training step
    would stall the GPU at every step; on CUDA the copy goes from pinned memory, non-blocking.
    Elsewhere this is ``tensor.to(device)`` (the tensor itself on the CPU).
    """
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


# What BatchAugment mirrors: these steps of the train pipeline, and Normalize only with these settings.
TRAIN_PIPELINE = "augment.json: the train pipeline's"
SUPPORTED_STEPS: tuple[type, ...] = (
    A.RandomCrop,
    A.HorizontalFlip,
    A.VerticalFlip,
    A.RandomRotate90,
    A.Affine,
    A.RandomBrightnessContrast,
    A.Normalize,
)
# The Affine that BatchAugment mirrors: rotation and an isotropic zoom about the centre, bilinear
# images, nearest masks, zeros outside the slice.
AFFINE_SETTINGS: dict[str, Any] = {
    "keep_ratio": True,
    "fit_output": False,
    "balanced_scale": False,
    "border_mode": cv2.BORDER_CONSTANT,
    "fill": 0.0,
    "fill_mask": 0.0,
    "interpolation": cv2.INTER_LINEAR,
    "mask_interpolation": cv2.INTER_NEAREST,
    "shear": {"x": (0.0, 0.0), "y": (0.0, 0.0)},
    "translate_px": {"x": (0, 0), "y": (0, 0)},
    "translate_percent": None,
}
NORMALIZE_SETTINGS: dict[str, Any] = {"max_pixel_value": 255.0, "normalization": "standard", "p": 1.0}


def _settings_differ(got: Any, expected: Any) -> bool:
    """Whether an albumentations setting differs; its ranges may be lists after a JSON round trip."""
    if isinstance(expected, dict):
        return not isinstance(got, dict) or any(_settings_differ(got.get(k), v) for k, v in expected.items())
    if isinstance(expected, tuple):
        return got is None or tuple(got) != expected
    return got != expected


def _find(pipeline: A.Compose, kind: type) -> Any | None:
    return next((t for t in pipeline.transforms if isinstance(t, kind)), None)


def _float_range(limits: Any) -> tuple[float, float]:
    """An albumentations (low, high) range as floats."""
    return cast(tuple[float, float], tuple(map(float, limits)))


@dataclass(frozen=True)
class BatchAugment:
    """The train pipeline applied to a whole batch of tensors (N,C,H,W), on any device.

    Each sample draws its own crop, flips, quarter turns, rotation and zoom, as albumentations
    would per sample; masks and distance maps get the same geometry as their image. Brightness and
    contrast change the image alone. One difference is deliberate: where a warp brings in pixels
    from outside the slice, the distance map gets +inf (no border nearby) and zooms with the
    slice, where albumentations, which treats it as a mask, would fill 0 (the highest border
    weight) and keep its values.
    """

    hflip: float
    vflip: float
    rotate90: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop: tuple[int, int] | None = None
    brightness_contrast: float = 0.0
    brightness_limit: tuple[float, float] = (0.0, 0.0)
    contrast_limit: tuple[float, float] = (0.0, 0.0)
    affine: float = 0.0
    rotate_limit: tuple[float, float] = (0.0, 0.0)
    scale_limit: tuple[float, float] = (1.0, 1.0)

    @classmethod
    def from_pipeline(cls, pipeline: A.Compose) -> BatchAugment:
        """The batched twin of ``pipeline``; a step it would not reproduce exactly is a one-line error.

        Only RandomCrop (square, always applied, without padding, first), HorizontalFlip,
        VerticalFlip, RandomRotate90, Affine (:data:`AFFINE_SETTINGS`, before any brightness or
        contrast change), RandomBrightnessContrast (brightness relative to 255, no safe-range
        clipping of its draws), each at most once, and one standard Normalize (always
        applied, on 0..255 pixels, last) are mirrored: any other step, or another order, would
        silently not be applied in training as albumentations applies it.
        """
        where = TRAIN_PIPELINE
        seen: set[type] = set()
        for step in pipeline.transforms:
            kind = type(step)
            if kind not in SUPPORTED_STEPS:
                raise DataError(
                    f"{where} step {kind.__name__} is not reproduced by the batched training "
                    f"augmentation (supported: {', '.join(t.__name__ for t in SUPPORTED_STEPS)})"
                )
            if kind in seen:
                raise DataError(
                    f"{where} step {kind.__name__} appears twice; the batched training "
                    "augmentation applies each step once"
                )
            seen.add(kind)
        norm = _find(pipeline, A.Normalize)
        if norm is None:
            raise DataError("augment.json: the train pipeline has no Normalize step")
        steps = list(pipeline.transforms)
        if steps[-1] is not norm:
            raise DataError(
                f"{where} Normalize is not its last step; the batched training augmentation "
                "normalises after every other step"
            )
        unsupported = {
            name: value
            for name, value in (
                ("max_pixel_value", norm.max_pixel_value),
                ("normalization", norm.normalization),
                ("p", norm.p),
            )
            if value != NORMALIZE_SETTINGS[name]
        }
        if unsupported:
            got = ", ".join(f"{name}={value!r}" for name, value in unsupported.items())
            expected = ", ".join(f"{name}={value!r}" for name, value in NORMALIZE_SETTINGS.items())
            raise DataError(
                f"{where} Normalize has {got}; the batched training augmentation reproduces only {expected}"
            )

        crop = _find(pipeline, A.RandomCrop)
        if crop is not None and (crop.p != 1.0 or crop.pad_if_needed or crop.height != crop.width):
            raise DataError(
                f"{where} RandomCrop has p={crop.p!r}, pad_if_needed={crop.pad_if_needed!r}, "
                f"{crop.height}x{crop.width}; the batched training augmentation reproduces only "
                "p=1.0, pad_if_needed=False, square crops"
            )
        if crop is not None and steps[0] is not crop:
            raise DataError(
                f"{where} RandomCrop is not its first step; the batched training augmentation "
                "crops before every other step"
            )

        adjust = _find(pipeline, A.RandomBrightnessContrast)
        if adjust is not None and (not adjust.brightness_by_max or adjust.ensure_safe_range):
            raise DataError(
                f"{where} RandomBrightnessContrast has brightness_by_max={adjust.brightness_by_max!r}, "
                f"ensure_safe_range={adjust.ensure_safe_range!r}; the batched training augmentation "
                "reproduces only brightness_by_max=True, ensure_safe_range=False"
            )

        affine = _find(pipeline, A.Affine)
        if affine is not None:
            unsupported = {
                name: getattr(affine, name)
                for name, value in AFFINE_SETTINGS.items()
                if _settings_differ(getattr(affine, name), value)
            }
            if affine.scale["x"] != affine.scale["y"] or min(affine.scale["x"]) <= 0:
                unsupported["scale"] = affine.scale
            if unsupported:
                got = ", ".join(f"{name}={value!r}" for name, value in unsupported.items())
                raise DataError(
                    f"{where} Affine has {got}; the batched training augmentation reproduces only "
                    "rotation and a positive isotropic zoom (keep_ratio=True, no shear or "
                    "translation, linear images, nearest masks, zeros outside)"
                )
            # A flip after the warp turns its angle round, which changes an uneven rotation range.
            later = [
                type(step).__name__
                for step in steps[steps.index(affine) + 1 :]
                if isinstance(step, (A.HorizontalFlip, A.VerticalFlip, A.RandomRotate90))
            ]
            if later:
                raise DataError(
                    f"{where} {', '.join(later)} comes after Affine; the batched training "
                    "augmentation warps after the flips and quarter turns"
                )
            if adjust is not None and steps.index(adjust) < steps.index(affine):
                raise DataError(
                    f"{where} RandomBrightnessContrast comes before Affine; the batched training "
                    "augmentation changes brightness and contrast after the geometry"
                )

        def prob(kind: type) -> float:
            transform = _find(pipeline, kind)
            return float(transform.p) if transform is not None else 0.0

        return cls(
            hflip=prob(A.HorizontalFlip),
            vflip=prob(A.VerticalFlip),
            rotate90=prob(A.RandomRotate90),
            mean=tuple(float(m) for m in norm.mean),
            std=tuple(float(s) for s in norm.std),
            crop=None if crop is None else (int(crop.height), int(crop.width)),
            brightness_contrast=prob(A.RandomBrightnessContrast),
            brightness_limit=(0.0, 0.0) if adjust is None else _float_range(adjust.brightness_limit),
            contrast_limit=(0.0, 0.0) if adjust is None else _float_range(adjust.contrast_limit),
            affine=prob(A.Affine),
            rotate_limit=(0.0, 0.0) if affine is None else _float_range(affine.rotate),
            scale_limit=(1.0, 1.0) if affine is None else _float_range(affine.scale["x"]),
        )

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return standardise(images, self.mean, self.std)

    def geometry(self, tensors: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
        """Random crops, flips, 90-degree rotations and affine warps, identical across ``tensors`` per sample.

        ``tensors`` are the images first, then label maps (see :meth:`random_affine`). The draws
        come from ``generator`` on the host, so a seed gives the same augmentation on any device;
        they reach the device in non-blocking copies (:func:`host_to_device`).
        """
        if self.crop is not None:
            tensors = self.random_crop(tensors, generator)
        n, device = tensors[0].shape[0], tensors[0].device
        draw = torch.rand((n, 3), generator=generator)
        turns = torch.randint(0, 4, (n,), generator=generator)
        hflip = host_to_device(draw[:, 0] < self.hflip, device).view(-1, 1, 1, 1)
        vflip = host_to_device(draw[:, 1] < self.vflip, device).view(-1, 1, 1, 1)
        turns = torch.where(draw[:, 2] < self.rotate90, turns, torch.zeros_like(turns))
        rows_turned = {k: (turns == k).nonzero().flatten() for k in (1, 2, 3)}
        chosen = {k: host_to_device(rows, device) for k, rows in rows_turned.items() if rows.numel()}
        out = []
        for tensor in tensors:
            tensor = torch.where(hflip, tensor.flip(-1), tensor)
            tensor = torch.where(vflip, tensor.flip(-2), tensor)
            rotated = tensor.clone()
            for k, rows in chosen.items():
                rotated[rows] = torch.rot90(tensor[rows], k, dims=(-2, -1))
            out.append(rotated)
        return self.random_affine(out, generator) if self.affine > 0 else out

    def random_affine(self, tensors: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
        """A random rotation and zoom about the centre on the samples drawn, as A.Affine applies them.

        With probability ``affine`` a sample is rotated by ``U(rotate_limit)`` degrees and zoomed
        by ``U(scale_limit)``. The images (``tensors[0]``) are sampled bilinearly and rounded
        back to their dtype (a rare pixel one grey level off cv2's fixed-point interpolation),
        the label maps after them at the nearest pixel; what comes from
        outside the slice is 0, except in a floating-point label map, which holds distances in
        pixels (the cache's border-distance map): there it is +inf (no border), and the distances
        inside zoom with the slice.
        """
        n, device = tensors[0].shape[0], tensors[0].device
        chosen, turn, zoom = torch.rand((3, n), generator=generator, dtype=torch.float64)
        rows = (chosen < self.affine).nonzero().flatten()
        if rows.numel() == 0:
            return tensors
        low, high = self.rotate_limit
        angle = torch.deg2rad(low + (high - low) * turn[rows])
        low, high = self.scale_limit
        scale = low + (high - low) * zoom[rows]
        # affine_grid maps output to input coordinates: the inverse of "rotate by angle, zoom by scale".
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        zero = torch.zeros_like(cos)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        rows, theta = host_to_device(rows, device), host_to_device(theta.float(), device)
        zoom_on_device = host_to_device(scale.float().view(-1, 1, 1, 1), device)
        grid = F.affine_grid(theta, [len(rows), 1, *tensors[0].shape[-2:]], align_corners=False)
        inside = (grid.abs() <= 1).all(dim=-1).unsqueeze(1)
        out = []
        for index, tensor in enumerate(tensors):
            chosen_rows = tensor[rows].float()
            if index == 0:
                warped = F.grid_sample(chosen_rows, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
                if not tensor.is_floating_point():
                    warped = warped.round().clamp(0, torch.iinfo(tensor.dtype).max)
            elif tensor.is_floating_point():
                warped = F.grid_sample(chosen_rows, grid, mode="nearest", padding_mode="border", align_corners=False)
                warped = torch.where(inside, warped * zoom_on_device, torch.inf)
            else:
                warped = F.grid_sample(chosen_rows, grid, mode="nearest", padding_mode="zeros", align_corners=False)
            result = tensor.clone()
            result[rows] = warped.to(tensor.dtype)
            out.append(result)
        return out

    def random_crop(self, tensors: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
        """A ``crop``-sized window of each sample at a uniformly drawn offset, as A.RandomCrop draws it."""
        (n, _, height, width), device = tensors[0].shape, tensors[0].device
        assert self.crop is not None  # called only with a crop set
        crop_height, crop_width = self.crop
        if crop_height > height or crop_width > width:
            raise DataError(
                f"{TRAIN_PIPELINE} RandomCrop ({crop_height}x{crop_width}) is larger "
                f"than the training slices ({height}x{width})"
            )
        top = torch.randint(0, height - crop_height + 1, (n, 1), generator=generator)
        left = torch.randint(0, width - crop_width + 1, (n, 1), generator=generator)
        rows = host_to_device(top + torch.arange(crop_height), device)[:, :, None]
        cols = host_to_device(left + torch.arange(crop_width), device)[:, None, :]
        samples = torch.arange(n, device=device)[:, None, None]
        # Advanced indices around the channel slice put the indexed dims first: (N, h, w, C).
        return [tensor[samples, :, rows, cols].permute(0, 3, 1, 2).contiguous() for tensor in tensors]

    def adjust_brightness_contrast(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random brightness and contrast of uint8 images (N,C,H,W), as A.RandomBrightnessContrast.

        With probability ``brightness_contrast`` a sample becomes ``x * alpha + beta * 255``,
        ``alpha = 1 + U(contrast_limit)``, ``beta = U(brightness_limit)``, truncated to 0..255
        (albumentations' uint8 lookup table); the others stay as they are.
        """
        if self.brightness_contrast == 0:
            return images
        n, device = images.shape[0], images.device
        chosen, contrast, brightness = torch.rand((3, n), generator=generator, dtype=torch.float64)
        applied = chosen < self.brightness_contrast
        low, high = self.contrast_limit
        alpha = torch.where(applied, 1.0 + low + (high - low) * contrast, 1.0)
        low, high = self.brightness_limit
        beta = torch.where(applied, (low + (high - low) * brightness) * 255.0, 0.0)
        alpha, beta = (host_to_device(v.float().view(-1, 1, 1, 1), device) for v in (alpha, beta))
        return (images.float() * alpha + beta).floor().clamp(0, 255).to(images.dtype)
