"""Devices and mixed precision: which torch device a run uses and in what precision it computes.

torch is imported by the functions that use it, so that the command line can name :data:`DEVICES`
(its ``--device`` choices) without importing torch for every command.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, get_args

import numpy as np

from glioseg.config.sections import DeviceName
from glioseg.errors import ConfigError

if TYPE_CHECKING:
    import torch

DEVICES: tuple[str, ...] = get_args(DeviceName)


def select_device(choice: str = "auto", setting: str = "run.device") -> torch.device:
    """The torch device for ``choice``; ``setting`` names where the choice came from, for the error.

    A dotted setting is a params.yaml key (``run.device``), anything else is named as it is
    (``--device``).
    """
    import torch

    where = f"params.yaml: key '{setting}'" if "." in setting else setting
    if choice not in DEVICES:
        raise ConfigError(f"{where}: expected one of {', '.join(DEVICES)} (got {choice!r})")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{where}: 'cuda' requested but no CUDA device is available")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def kernel_name(device: torch.device) -> str:
    """``cuda``, or torch's CPU capability (``avx2``, ``avx512``), ``_amx`` added with AMX tiles:
    seeded CPU numbers differ between these, so metrics record it (docs/design.md, Conventions)."""
    import torch

    if device.type == "cuda":
        return "cuda"
    capability = torch.backends.cpu.get_cpu_capability().lower()
    return f"{capability}_amx" if torch.cpu._is_amx_tile_supported() else capability


def cpu_has_native_bf16() -> bool:
    """True where oneDNN runs bf16 convolutions natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    import torch

    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def autocast_dtype(device: torch.device, enabled: bool, cpu: bool = False) -> torch.dtype | None:
    """The autocast precision, or None for fp32.

    CUDA: bf16, or fp16 where bf16 is missing. CPU (only when ``cpu`` is asked, i.e. for training):
    bf16 where the CPU has native bf16 (faster convolutions, benchmarks/results.md); inference on
    the CPU stays fp32 so that predictions do not depend on which CPU made them.
    """
    import torch

    if not enabled:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def precision_name(dtype: torch.dtype | None) -> str:
    """``fp32``, ``bf16`` or ``fp16``: how metrics files and CI baselines record an autocast precision."""
    import torch

    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def to_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (N,H,W,C) -> uint8 (N,C,H,W) on ``device``, channels-last for faster convolutions."""
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    return tensor.to(device).contiguous(memory_format=torch.channels_last)
