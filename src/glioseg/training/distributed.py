"""Data-parallel training under ``torchrun``: DistributedDataParallel over gloo (CPU) or NCCL (CUDA).

``torchrun`` starts one process per device and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and
the rendezvous address; :func:`init` reads them. Without ``torchrun`` (or with one process) the
world has one rank and every helper here leaves single-process training exactly as it was.

``batch_size`` stays the global batch. Every rank holds the whole training set, draws the same
permutation and the same augmentation for each global batch (identically seeded generators) and
trains on its contiguous share of it. DDP averages gradients over ranks, so each rank weights
the mean loss of its share by ``share * world / batch``: the average is then the gradient of the
global batch's mean loss, as in one process, for uneven shares too. A rank whose share is empty
(a last batch smaller than the world) trains on a repeat of the batch's last sample at weight 0,
because DDP needs every rank to run forward and backward (with SyncBatchNorm that repeat still
enters the batch statistics of that one last batch).

Batch norm: ``SyncBatchNorm`` needs CUDA (torch 2.14 rejects CPU input, and the kernels it calls
have no CPU implementation). On CUDA batch-norm layers become ``SyncBatchNorm`` and normalise over
the global batch. On CPU each rank normalises over its own share, so the run only approximates one
process; the running statistics are rank 0's (DDP broadcasts them before each forward and
:meth:`World.sync_buffers` after each epoch). Group norm does not depend on the batch and trains
the same model as one process on any device.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Share:
    """This rank's part of one global batch.

    ``rows``: positions in the global batch to train on (never empty); ``own``: how many of them
    are this rank's samples (0 when the one row is a padding repeat); ``weight``: the factor on the
    share's mean loss that makes DDP's averaged gradient the global batch's.
    """

    rows: slice | list[int]
    own: int
    weight: float


@dataclass(frozen=True)
class World:
    """The processes training one model together, seen from one of them."""

    device: torch.device
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs and outputs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def share(self, batch: int) -> Share:
        """Contiguous, near-equal shares (earlier ranks take the remainder, so rank 0 is never empty)."""
        start, stop = (-(-batch * rank // self.size) for rank in (self.rank, self.rank + 1))
        if stop > start:
            return Share(slice(start, stop), stop - start, (stop - start) * self.size / batch)
        return Share([batch - 1], 0, 0.0)

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to train: DDP over ``model`` (with SyncBatchNorm on CUDA), or ``model`` alone.

        ``static_graph``: every step uses the same parameters, but not all of them (an smp encoder
        of depth below 5 keeps its deeper, unused stages), which plain DDP rejects.
        """
        if not self.distributed:
            return model
        if self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(
            model, device_ids=[self.device] if self.device.type == "cuda" else None, static_graph=True
        )

    def sync_buffers(self, model: nn.Module) -> None:
        """Give every rank rank 0's buffers (batch-norm running statistics), so all hold one model."""
        if self.distributed:
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (any picklable object), in rank order, on every rank."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def all_sum(self, value: float) -> float:
        return sum(self.gather(value))

    def all_concat(self, *arrays: np.ndarray) -> list[np.ndarray]:
        """Each array concatenated over ranks (rank-major row order)."""
        if not self.distributed:
            return list(arrays)
        return [np.concatenate(parts) for parts in zip(*self.gather(arrays), strict=True)]


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP: its state dict loads in a single process."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def launched_rank() -> int:
    """This process's rank as torchrun set it (``RANK``), 0 without torchrun; known before any process group."""
    return int(os.environ.get("RANK", "0"))


def init(device: torch.device) -> World:
    """This process's world, from torchrun's environment variables; a world of one without them.

    Joins the process group (NCCL for CUDA, gloo for CPU) on first use and leaves it at exit.
    Under torchrun each CUDA rank takes the GPU ``LOCAL_RANK``.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(_leave)
    return World(device, dist.get_rank(), dist.get_world_size())


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
