"""Running a model over arrays of slices: devices, mixed precision and batched prediction."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from glioseg.errors import ConfigError
from glioseg.transforms import BatchAugment


def select_device(choice: str = "auto") -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("params.yaml: key 'train.device': 'cuda' requested but no CUDA device is available")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 (or fp16 where bf16 is missing) autocast on CUDA; plain fp32 on the CPU."""
    if device.type != "cuda" or not enabled:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def to_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (N,H,W,C) -> uint8 (N,C,H,W) on ``device``, channels-last for faster convolutions."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    return tensor.to(device).contiguous(memory_format=torch.channels_last)


def logit(probability: float) -> float:
    """Threshold on logits equivalent to ``sigmoid(logit) > probability`` (no sigmoid needed)."""
    probability = min(max(probability, 1e-7), 1 - 1e-7)
    return float(np.log(probability / (1 - probability)))


def labels_from_logits(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """(N,H,W) uint8 class labels: one channel -> sigmoid above ``threshold``; C channels -> argmax."""
    if logits.shape[1] == 1:
        return (logits[:, 0].float() > logit(threshold)).to(torch.uint8)
    return logits.argmax(dim=1).to(torch.uint8)


@torch.no_grad()
def predict_labels(
    model: torch.nn.Module,
    images: np.ndarray,
    normaliser: BatchAugment,
    device: torch.device,
    threshold: float,
    batch_size: int = 32,
    amp: bool = True,
) -> np.ndarray:
    """Class labels (N,H,W) uint8 for uint8 images (N,H,W,C) already at model size (LGG: 0/1)."""
    model.eval()
    out = np.empty(images.shape[:3], np.uint8)
    for start in range(0, len(images), batch_size):
        batch = normaliser.normalise(to_tensor(images[start : start + batch_size], device))
        with autocast(device, amp):
            logits = model(batch.contiguous(memory_format=torch.channels_last))
        out[start : start + batch_size] = labels_from_logits(logits, threshold).cpu().numpy()
    return out
