"""The two training loops the benchmark times, as sessions that run N optimiser steps on request.

- :class:`NaiveSession`: the reference a first notebook would write. A torch ``Dataset`` reads
  the TIF image and mask from disk for every item and runs a per-sample albumentations
  ``Compose`` (Resize, HorizontalFlip, VerticalFlip, RandomRotate90, Normalize); a
  ``DataLoader`` (``num_workers=0``) batches them; the same smp U-Net trains in fp32,
  contiguous memory format, with BCE + soft Dice and Adam.
- :class:`GliosegSession`: :class:`glioseg.training.loop.Trainer` itself on the in-memory array cache
  (loaded from the ``.npz`` the pipeline writes), batched tensor augmentation, channels-last,
  bf16/fp16 autocast on CUDA and bf16 on CPUs with native bf16, fused Adam; each request is one
  ``Trainer.train_epoch()`` over exactly N batches.

A session first runs its untimed warm-up steps, then timed rounds; :mod:`benchmarks.run`
alternates rounds of the two sessions so that load from other processes hits both alike.
images/s = images / seconds over the timed rounds. :func:`serve` runs a session in a child
process (one per loop, so each has its own peak RSS and CUDA context).
"""

from __future__ import annotations

import os
import resource
import time
import traceback
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import tifffile
import torch
import torch.nn.functional as F
from albumentations.pytorch import ToTensorV2
from torch.utils.data import DataLoader, Dataset

from benchmarks.machine import device_name
from glioseg.config.schema import Params, parse_params
from glioseg.data.cache import SliceArrays, load_cache
from glioseg.data.transforms import build_pipelines, pipelines_to_dict
from glioseg.device import select_device
from glioseg.model.network import build_model
from glioseg.training.loop import DeviceArrays, Trainer

MIB = 1024 * 1024


# --------------------------------------------------------------------------- memory


def rss_mib() -> float | None:
    """Current resident set size (Linux /proc), MiB."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / MIB


def peak_rss_mib() -> float:
    # ru_maxrss is KiB on Linux (bytes on macOS).
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (MIB if os.uname().sysname == "Darwin" else 1024)


def loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- common session


class Session:
    """Warm-up, then timed rounds of ``run(steps)``; ``result()`` summarises the timed rounds."""

    loop = ""
    precision = "fp32"
    memory_format = "contiguous"

    def __init__(self, params: dict[str, Any]):
        self.rss_start = rss_mib()  # torch, smp and glioseg imported (torch alone is ~0.5 GiB)
        self.config: Params = parse_params(params)
        self.device = select_device(self.config.run.device)
        if self.config.run.threads:  # as the Trainer does, so both loops get the same threads
            torch.set_num_threads(self.config.run.threads)
        self.batch_size = self.config.batch_size
        self.warmup_steps = 0
        self.rounds: list[tuple[int, int, float]] = []  # (steps, images, seconds) per timed round
        self.rss_before: float | None = None
        self.load: list[float | None] = []
        self.extra: dict[str, Any] = {}

    def _steps(self, steps: int) -> int:
        """Run ``steps`` optimiser steps; return the number of images processed."""
        raise NotImplementedError

    def prepare(self, steps: int) -> None:
        """Set up the next round of ``steps`` outside the timed region (nothing by default)."""

    def warmup(self, steps: int) -> None:
        if steps:
            self._steps(steps)
        self.warmup_steps += steps

    def run(self, steps: int) -> float:
        """One timed round; returns its images/s."""
        if not self.rounds:
            self.rss_before = rss_mib()
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
        self.load.append(loadavg())
        _sync(self.device)
        began = time.perf_counter()
        images = self._steps(steps)
        _sync(self.device)
        seconds = time.perf_counter() - began
        self.rounds.append((steps, images, seconds))
        return images / seconds

    def result(self) -> dict[str, Any]:
        config, device = self.config, self.device
        steps = sum(r[0] for r in self.rounds)
        images = sum(r[1] for r in self.rounds)
        seconds = sum(r[2] for r in self.rounds)
        per_round = [r[1] / r[2] for r in self.rounds]
        peak = peak_rss_mib()
        return {
            "loop": self.loop,
            "device": device.type,
            "device_name": device_name(device),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "image_size": config.augment.image_size,
            "batch_size": config.batch_size,
            "encoder": config.model.encoder,
            "encoder_depth": config.model.encoder_depth,
            "decoder_channels": list(config.model.decoder_channels),
            "precision": self.precision,
            "memory_format": self.memory_format,
            "warmup_steps": self.warmup_steps,
            "steps": steps,
            "images": images,
            "seconds": round(seconds, 4),
            "images_per_s": images / seconds if seconds > 0 else float("nan"),
            "rounds": len(self.rounds),
            "images_per_s_per_round": [round(x, 3) for x in per_round],
            # RSS when the session started (imports done), before the first timed round, and the
            # process's peak; peak - start is what the loop itself added.
            "rss_start_mib": None if self.rss_start is None else round(self.rss_start, 1),
            "rss_before_timing_mib": None if self.rss_before is None else round(self.rss_before, 1),
            "peak_rss_mib": round(peak, 1),
            "peak_rss_over_start_mib": None if self.rss_start is None else round(peak - self.rss_start, 1),
            "cuda_max_allocated_mib": (
                round(torch.cuda.max_memory_allocated(device) / MIB, 1) if device.type == "cuda" else None
            ),
            "loadavg_1min_per_round": self.load,
            **self.extra,
        }


# --------------------------------------------------------------------------- naive reference


class TifSlices(Dataset):
    """Reads one image/mask TIF pair from disk per item and runs the per-sample pipeline."""

    def __init__(self, pairs: list[tuple[str, str]], transform: A.Compose):
        self.pairs = pairs
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.pairs[index]
        image = tifffile.imread(image_path)
        mask = (tifffile.imread(mask_path) > 0).astype(np.uint8)
        out = self.transform(image=image, mask=mask)
        return out["image"], out["mask"]


def naive_transform(image_size: int, mean: list[float], std: list[float]) -> A.Compose:
    return A.Compose(
        [
            A.Resize(image_size, image_size),
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.RandomRotate90(p=0.5),
            A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0),
            ToTensorV2(),
        ]
    )


def bce_dice(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Unweighted BCE plus (1 - soft Dice per image, averaged over the batch)."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    probabilities = torch.sigmoid(logits)
    dims = (1, 2, 3)
    dice = (2 * (probabilities * target).sum(dims) + eps) / (probabilities.sum(dims) + target.sum(dims) + eps)
    return bce + (1 - dice.mean())


def _forever(loader: DataLoader) -> Iterator:
    while True:
        yield from loader


class NaiveSession(Session):
    """The per-sample reference loop; ``pairs`` are (image TIF, mask TIF) paths."""

    loop = "naive"

    def __init__(self, params: dict[str, Any], pairs: list[tuple[str, str]], mean: list[float], std: list[float]):
        super().__init__(params)
        config = self.config
        torch.manual_seed(config.seed)
        if len(pairs) < config.batch_size:
            raise ValueError(f"need at least batch_size={config.batch_size} slices, got {len(pairs)}")
        dataset = TifSlices(pairs, naive_transform(config.augment.image_size, mean, std))
        loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, num_workers=0, drop_last=True)
        self.batches = _forever(loader)
        self.model = build_model(config.model).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.model.train()
        self.data_seconds = 0.0  # in the DataLoader (TIF decode + per-sample albumentations + collate)

    def run(self, steps: int) -> float:
        if not self.rounds:
            self.data_seconds = 0.0  # count the timed rounds only
        return super().run(steps)

    def result(self) -> dict[str, Any]:
        out = super().result()
        out["data_seconds"] = round(self.data_seconds, 4)
        out["data_share"] = round(self.data_seconds / out["seconds"], 4) if out["seconds"] else None
        return out

    def _steps(self, steps: int) -> int:
        images_seen = 0
        for _ in range(steps):
            began = time.perf_counter()
            images, masks = next(self.batches)
            self.data_seconds += time.perf_counter() - began
            images = images.to(self.device)
            target = masks.to(self.device).unsqueeze(1).float()
            logits = self.model(images)
            loss = bce_dice(logits, target)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss.item()  # what a logging loop does every step
            images_seen += len(images)
        return images_seen


# --------------------------------------------------------------------------- glioseg's Trainer


def repeat_slices(arrays: SliceArrays, n: int, rng: np.random.Generator) -> SliceArrays:
    """``n`` slices of ``arrays`` in a random order (each once before any repeats)."""
    return arrays.take(np.resize(rng.permutation(len(arrays)), n))


class GliosegSession(Session):
    """``Trainer.train_epoch()`` over exactly ``steps`` batches per request.

    The Trainer is built on the whole cache (normalisation statistics, class balance); before
    each call its ``train_data`` is swapped for ``steps * batch_size`` slices of it (on the
    device), so one ``train_epoch()`` is that many optimiser steps. The swap is not timed.
    """

    loop = "glioseg"
    memory_format = "channels_last"

    def __init__(self, params: dict[str, Any], cache_path: str):
        super().__init__(params)
        began = time.perf_counter()
        arrays = load_cache(cache_path)
        self.extra["cache_load_s_in_session"] = round(time.perf_counter() - began, 4)
        if arrays.image_size != self.config.augment.image_size:
            raise ValueError(
                f"{cache_path}: cache is {arrays.image_size} px, profile wants {self.config.augment.image_size}"
            )
        pipelines = pipelines_to_dict(build_pipelines(self.config.augment, arrays.images))
        val = arrays.take(np.arange(min(len(arrays), self.batch_size)))
        self.arrays = arrays
        self.trainer = Trainer(self.config, arrays, val, pipelines, fingerprint="benchmark")
        self.device = self.trainer.device
        self.rng = np.random.default_rng(self.config.seed)
        self.precision = {torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast + GradScaler", None: "fp32"}[
            self.trainer.precision
        ]
        self._prepared: tuple[int, DeviceArrays] | None = None

    def _batches(self, steps: int) -> DeviceArrays:
        return DeviceArrays.from_arrays(repeat_slices(self.arrays, steps * self.batch_size, self.rng), self.device)

    def prepare(self, steps: int) -> None:
        """Put the next round's slices on the device (outside the timed region)."""
        self._prepared = (steps, self._batches(steps))

    def _steps(self, steps: int) -> int:
        data = self._prepared[1] if self._prepared is not None and self._prepared[0] == steps else self._batches(steps)
        self._prepared = None
        self.trainer.train_data = data
        self.trainer.train_epoch()
        return len(data)


SESSIONS = {"naive": NaiveSession, "glioseg": GliosegSession}


# --------------------------------------------------------------------------- child process


def serve(conn: Connection, kind: str, args: tuple) -> None:
    """Child-process loop: build the session, then answer (method, *args) requests until 'result'.

    Every reply is ``("ok", value)`` or ``("error", traceback text)``.
    """
    try:
        session = SESSIONS[kind](*args)
        conn.send(("ok", None))
        while True:
            method, *call_args = conn.recv()
            value = getattr(session, method)(*call_args)
            conn.send(("ok", value))
            if method == "result":
                return
    except BaseException:  # report anything, including KeyboardInterrupt, to the parent
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()
