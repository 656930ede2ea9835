"""The training loop: seeded, in-memory batches, AMP on CUDA, best/last checkpoints and resume.

Data never leave memory: the cached uint8 arrays become tensors on the training device once,
and each epoch draws a permutation and applies :class:`~glioseg.data.batch_augment.BatchAugment` to
whole batches. ``checkpoint_dir/last.pt`` is rewritten after every epoch (atomically) with the
optimiser and random-generator states, so an interrupted run resumes where it stopped and ends
with the same weights as an uninterrupted one. It is only resumed when its fingerprint (params
and data) matches. Under ``torchrun`` the same loop trains with DistributedDataParallel, each
rank on its share of every global batch; rank 0 alone writes checkpoints and calls ``on_epoch``
(:mod:`glioseg.training.distributed`).
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from glioseg.config.schema import Params
from glioseg.data.batch_augment import BatchAugment, host_to_device
from glioseg.data.cache import SliceArrays
from glioseg.data.transforms import pipelines_from_dict
from glioseg.device import autocast, autocast_dtype, kernel_name, precision_name, select_device, to_tensor
from glioseg.errors import ConfigError, DataError, TrainingError
from glioseg.metrics import Regions, region_confusion_tensor, summarise
from glioseg.model.checkpoint import model_payload, read_checkpoint, save_checkpoint
from glioseg.model.network import build_model, labels_from_logits
from glioseg.training import distributed
from glioseg.training.losses import SegmentationLoss, class_frequency_weights

EpochCallback = Callable[[int, dict[str, float], torch.nn.Module], None]

CURVE_METRICS = ("loss", "dice", "iou", "dice_positive_slice")

# Training and validation curves (and so the best epoch) label pixels at probability 0.5, not at
# inference.threshold: what a run learns and keeps must not depend on an inference setting.
VALIDATION_THRESHOLD = 0.5


def check_finite(row: dict[str, float], epoch: int, last_path: Path) -> None:
    """Stop before an epoch whose loss is not finite is kept: ``last_path`` still holds the epoch before."""
    bad = {key: value for key, value in row.items() if key.endswith("_loss") and not math.isfinite(value)}
    if bad:
        kept = f"{last_path} keeps epoch {epoch - 1}" if epoch > 1 else "no epoch is kept"
        losses = ", ".join(f"{key} {value}" for key, value in bad.items())
        raise TrainingError(
            f"epoch {epoch}: {losses}, not finite; training stopped and {kept} (lower lr or set train.clip_grad_norm)"
        )


@dataclass
class TrainOutcome:
    best: dict[str, Any]
    history: pd.DataFrame
    best_epoch: int
    resumed_from: int


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class DeviceArrays:
    """One subset of the cache as tensors on the training device."""

    images: torch.Tensor
    masks: torch.Tensor
    distance: torch.Tensor
    patient: np.ndarray

    @classmethod
    def from_arrays(cls, arrays: SliceArrays, device: torch.device) -> DeviceArrays:
        return cls(
            images=to_tensor(arrays.images, device),
            masks=torch.from_numpy(arrays.masks).unsqueeze(1).to(device),
            distance=torch.from_numpy(arrays.distance).unsqueeze(1).to(device),
            patient=arrays.patient,
        )

    def __len__(self) -> int:
        return len(self.images)


def epoch_summary(counts: np.ndarray, patients: np.ndarray, loss: float) -> dict[str, float]:
    """Loss and per-patient Dice/IoU from (N, R, 4) counts, averaged over the R regions."""
    per_region = []
    for region in range(counts.shape[1]):
        stats = summarise(pd.DataFrame(counts[:, region], columns=["tp", "fp", "fn", "tn"]).assign(patient=patients))
        per_region.append(
            [stats["dice_patient_mean"], stats["iou_patient_mean"], stats.get("dice_positive_slice_mean", float("nan"))]
        )
    dice, iou, dice_positive = np.nanmean(np.array(per_region), axis=0) if per_region else [float("nan")] * 3
    return {"loss": loss, "dice": float(dice), "iou": float(iou), "dice_positive_slice": float(dice_positive)}


def class_weights(params: Params, masks: np.ndarray) -> tuple[float, ...]:
    """Inverse-frequency class weights from the training labels, or all 1 when balancing is off."""
    classes = max(2, params.output_channels)
    if not params.train.weight_map.class_balance or masks.size == 0:
        return (1.0,) * classes
    counts = np.bincount(masks.ravel(), minlength=classes)
    return class_frequency_weights(list(counts / counts.sum()))


def scheduled_lr(base_lr: float, schedule: str, progress: float) -> float:
    """Learning rate at ``progress`` (0 = first step, 1 = end of the last epoch) of training.

    A pure function of progress, so a resumed run continues the same curve without scheduler state.
    """
    if schedule == "constant":
        return base_lr
    final = base_lr / 100
    return final + (base_lr - final) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


class Trainer:
    def __init__(self, params: Params, train: SliceArrays, val: SliceArrays, pipelines: dict, fingerprint: str):
        self.params = params
        self.pipelines = pipelines
        self.fingerprint = fingerprint
        self.world = distributed.init(select_device(params.run.device, "run.device"))
        self.device = self.world.device
        if params.train.batch_dice and self.world.distributed:
            # Each rank sees only its share of the batch, so one Dice over the global batch would need
            # the ranks' pixel counts gathered with their gradients; the shares' weighted Dice is another loss.
            raise ConfigError(
                "train.batch_dice: true is not supported under torchrun (each rank sees only "
                "its share of the batch); set train.batch_dice: false to train with DDP"
            )
        self.precision = autocast_dtype(self.device, params.train.amp, cpu=True)
        seed_everything(params.seed)
        if params.run.threads:
            torch.set_num_threads(params.run.threads)
        self.augment = BatchAugment.from_pipeline(pipelines_from_dict(pipelines)["train"])
        self.train_data = DeviceArrays.from_arrays(train, self.device)
        self.val_data = DeviceArrays.from_arrays(val, self.device)
        weight = params.train.weight_map
        self.loss_fn = SegmentationLoss(
            params.loss,
            w0=weight.w0,
            sigma=weight.sigma,
            class_weights=class_weights(params, train.masks),
            batch_dice=params.train.batch_dice,
        )
        self.regions: Regions = params.regions()
        model = build_model(params.model).to(self.device).to(memory_format=torch.channels_last)
        network = self.world.wrap(model)  # DDP under torchrun, else the model itself
        self.model = distributed.unwrap(network)
        # What the training step calls. Validation, state dicts and checkpoints use the plain module.
        # torch.compile is typed for any callable; a module's compiled form is a module.
        self.network = (
            network
            if params.train.compile == "none"
            else cast(
                torch.nn.Module,
                torch.compile(network, mode=None if params.train.compile == "default" else params.train.compile),
            )
        )
        # One fused kernel for the whole update: per-tensor Adam is a large share of a small U-Net's CPU step.
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=params.lr, fused=True)
        # Batch-norm statistics are averaged with the weights (use_buffers), so the average is a whole model.
        self.average = (
            None
            if params.train.ema is None
            else AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(params.train.ema), use_buffers=True)
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == torch.float16)
        self.epochs_done = 0
        has_foreground = train.masks.reshape(len(train.masks), -1).any(axis=1)
        self.foreground_indices, self.empty_indices = np.flatnonzero(has_foreground), np.flatnonzero(~has_foreground)
        if params.train.empty_slices == 0 and len(self.foreground_indices) == 0:
            raise ConfigError("train.empty_slices: 0 leaves no training slices (no training slice has foreground)")
        self.order_rng = torch.Generator().manual_seed(params.seed)
        self.augment_rng = torch.Generator().manual_seed(params.seed + 1)

    def _state(self, epoch: int, history: list[dict], best: dict | None, best_epoch: int) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "epoch": epoch,
            "model": self.model.state_dict(),
            "average": None if self.average is None else self.average.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "order_rng": self.order_rng.get_state(),
            "augment_rng": self.augment_rng.get_state(),
            "torch_rng": torch.get_rng_state(),
            "history": history,
            "best": best,
            "best_epoch": best_epoch,
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if self.average is not None:
            self.average.load_state_dict(state["average"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.order_rng.set_state(state["order_rng"])
        self.augment_rng.set_state(state["augment_rng"])
        torch.set_rng_state(state["torch_rng"])

    def train_epoch(self) -> dict[str, float]:
        """One pass over the training data; returns loss, Dice/IoU and the median gradient norm.

        Loss, confusion counts and gradient norms stay on the device until the epoch ends, and
        the batch indices and augmentation draws reach it in non-blocking copies, so on a GPU no
        step waits for the one before (one host synchronisation per epoch).
        """
        self.network.train()
        data, batch_size = self.train_data, self.params.batch_size
        order = self.epoch_order()
        order_on_device, order_on_host = host_to_device(order, self.device), order.numpy()
        counts, patients, grad_norms = [], [], []
        total_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        clip = self.params.train.clip_grad_norm
        steps = -(-len(order) // batch_size)
        for step, start in enumerate(range(0, len(order), batch_size)):
            progress = (self.epochs_done + step / steps) / self.params.epochs
            for group in self.optimizer.param_groups:
                group["lr"] = scheduled_lr(self.params.lr, self.params.train.schedule, progress)
            batch = slice(start, start + batch_size)
            index = order_on_device[batch]
            images, masks, distance = self.augment.geometry(
                [data.images[index], data.masks[index], data.distance[index]], self.augment_rng
            )
            # Every rank draws for the whole global batch, so the generators stay in step across ranks.
            images = self.augment.adjust_brightness_contrast(images, self.augment_rng)
            share = self.world.share(len(index))
            images, masks, distance = (t[share.rows] for t in (images, masks, distance))
            images = self.augment.normalise(images).contiguous(memory_format=torch.channels_last)
            with autocast(self.device, self.precision):
                logits = self.network(images)
            loss = self.loss_fn(logits, masks, distance.float())
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss * share.weight).backward()
            if clip is not None:
                self.scaler.unscale_(self.optimizer)
                grad_norms.append(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.average is not None:
                self.average.update_parameters(self.model)
            # Statistics count this rank's own samples only (none where the share is a padding repeat).
            total_loss += loss.detach().double() * share.own
            counts.append(self.confusion(logits.detach()[: share.own], masks[: share.own]))
            patients.append(data.patient[order_on_host[batch][share.rows][: share.own]])
        self.epochs_done += 1
        all_counts, all_patients = self.world.all_concat(torch.cat(counts).cpu().numpy(), np.concatenate(patients))
        summary = epoch_summary(all_counts, all_patients, self.world.all_sum(float(total_loss)) / len(order))
        if grad_norms:  # before clipping; NaN/inf where a GradScaler step was skipped
            summary["grad_norm"] = float(np.median(torch.stack(grad_norms).double().cpu().numpy()))
        return summary

    def epoch_order(self) -> torch.Tensor:
        """One epoch's training slice indices, shuffled: every slice with foreground and a fresh
        ``train.empty_slices`` share of the others (at least one while the share is above 0).

        Drawn from the order generator, so a resumed run draws what an uninterrupted one would.
        """
        empty_share = self.params.train.empty_slices
        if empty_share >= 1:
            return torch.randperm(len(self.train_data), generator=self.order_rng)
        count = math.ceil(empty_share * len(self.empty_indices))
        chosen = self.empty_indices[torch.randperm(len(self.empty_indices), generator=self.order_rng)[:count].numpy()]
        drawn = torch.from_numpy(np.concatenate([self.foreground_indices, chosen]))
        return drawn[torch.randperm(len(drawn), generator=self.order_rng)]

    @property
    def kept_model(self) -> torch.nn.Module:
        """The weights a run validates and keeps: the moving average where ``train.ema`` is set."""
        return self.model if self.average is None else self.average.module

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        model = self.kept_model
        model.eval()
        data, counts = self.val_data, []
        total_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        for start in range(0, len(data), 64):
            part = slice(start, start + 64)
            images = self.augment.normalise(data.images[part]).contiguous(memory_format=torch.channels_last)
            with autocast(self.device, self.precision):
                logits = model(images)
            masks = data.masks[part]
            total_loss += self.loss_fn(logits, masks, data.distance[part].float()).double() * len(masks)
            counts.append(self.confusion(logits, masks))
        return epoch_summary(torch.cat(counts).cpu().numpy(), data.patient, float(total_loss) / max(len(data), 1))

    def confusion(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """(B, R, 4) counts per slice and evaluation region of a batch's predictions, on the device."""
        predicted = labels_from_logits(logits, VALIDATION_THRESHOLD)
        return region_confusion_tensor(predicted, masks[:, 0], self.regions)

    def resumable_state(self, checkpoint_dir: Path) -> dict[str, Any] | None:
        """``last.pt``'s state when this run continues it (same fingerprint), else None.

        A damaged file (a kill while the disk was full, a copy cut short) is not resumed: a
        warning names it and training starts over, overwriting it with the first good epoch.
        """
        last_path = checkpoint_dir / "last.pt"
        if not last_path.is_file():
            return None
        try:
            state = read_checkpoint(last_path)
        except DataError as exc:
            print(f"warning: {exc}; training starts again from epoch 1 and replaces it", file=sys.stderr)
            return None
        return state if state.get("fingerprint") == self.fingerprint else None

    def fit(
        self,
        checkpoint_dir: Path,
        on_epoch: EpochCallback | None = None,
        run_id: str | None = None,
        resume: bool = True,
    ) -> TrainOutcome:
        """Train to ``params.epochs``, resuming ``checkpoint_dir/last.pt`` when it is this run's (and ``resume``).

        ``run_id`` (the MLflow run the epochs are logged to) is kept in every checkpoint, so a
        resumed training continues the same run (:meth:`resumable_state`).
        """
        last_path = checkpoint_dir / "last.pt"
        history: list[dict] = []
        best, best_epoch, start_epoch = None, 0, 1
        state = self.resumable_state(checkpoint_dir) if resume else None
        if state is not None:
            self._restore(state)
            history, best, best_epoch = state["history"], state["best"], state["best_epoch"]
            start_epoch = state["epoch"] + 1
            self.epochs_done = state["epoch"]
        resumed_from = start_epoch - 1
        best_score = max((row["val_dice"] for row in history), default=-1.0)
        epochs = range(start_epoch, self.params.epochs + 1)
        for epoch in tqdm(
            epochs,
            desc="train",
            unit="epoch",
            initial=resumed_from,
            total=self.params.epochs,
            disable=not self.world.main,
        ):
            began = time.perf_counter()
            train_stats = self.train_epoch()
            self.world.sync_buffers(self.kept_model)  # every rank validates the same model: rank 0's
            val_stats = self.validate()
            row = {
                "epoch": epoch,
                **{f"train_{k}": v for k, v in train_stats.items()},
                **{f"val_{k}": v for k, v in val_stats.items()},
                "lr": self.optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - began,
            }
            check_finite(row, epoch, last_path)
            history.append(row)
            if self.params.train.keep == "last" or row["val_dice"] > best_score:
                best_score, best_epoch = row["val_dice"], epoch
                best = self.payload(epoch=epoch, val_dice=row["val_dice"])
            if self.world.main:
                save_checkpoint(last_path, self._state(epoch, history, best, best_epoch) | {"mlflow_run_id": run_id})
                if on_epoch is not None:
                    on_epoch(epoch, row, self.kept_model)
        assert best is not None  # set by the first epoch (its val Dice beats -1), or resumed with it
        return TrainOutcome(best=best, history=pd.DataFrame(history), best_epoch=best_epoch, resumed_from=resumed_from)

    def payload(self, **meta: Any) -> dict[str, Any]:
        """The model file's content; its meta records the precision and kernels it trained with (each
        changes the numbers)."""
        return model_payload(
            self.kept_model,
            self.params.model,
            self.pipelines,
            self.params.inference,
            self.params.data_card(),
            training_precision=precision_name(self.precision),
            training_kernels=kernel_name(self.device),
            **meta,
        )
