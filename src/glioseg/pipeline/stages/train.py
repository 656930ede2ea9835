"""The training stages: a training run with its MLflow run, for the main model and each sweep.

Stage scripts and the CLI call these; each function reads the pipeline's inputs from
:mod:`glioseg.paths`, writes its outputs atomically and returns what it wrote. Evaluation is
another stage (:mod:`glioseg.pipeline.stages.evaluate`), so nothing here depends on inference-only code.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from glioseg import paths
from glioseg.config.numerics import recorded_numerics
from glioseg.config.schema import Params
from glioseg.data.batch_augment import eval_normaliser
from glioseg.data.cache import SliceArrays, load_cache
from glioseg.data.context import centre_slice
from glioseg.errors import DataError
from glioseg.evaluation.learning import learning_failure, not_learned_warning
from glioseg.figures import figure_to_array, learning_curves, overlay, overlay_grid
from glioseg.inference.forward import predict_labels
from glioseg.io import exclusive_lock, read_json, write_csv, write_json
from glioseg.model.checkpoint import save_checkpoint
from glioseg.model.network import build_model
from glioseg.pipeline import codedeps
from glioseg.tracking import store as tracking
from glioseg.training.loop import CURVE_METRICS, VALIDATION_THRESHOLD, Trainer


def load_pipelines(path: Path = paths.AUGMENT) -> dict[str, Any]:
    if not Path(path).is_file():
        raise DataError(f"{path}: augmentation pipeline not found (run `dvc repro augment`)")
    return read_json(path)


def fingerprint(params: Params, cache_path: Path, pipelines: dict) -> str:
    """What a resumable checkpoint must match: training params, pipelines, cached data and the training code.

    The code is this module's import closure, the files DVC tracks for the train stages
    (:mod:`glioseg.pipeline.codedeps`): a checkpoint left by other code is not resumed, because DVC
    re-runs training when that code changes and the run must then really train again. Inference
    and execution params are left out: changing them never makes a run train again.
    """
    digest = hashlib.sha256(json.dumps(params.training(), sort_keys=True).encode())
    for path in codedeps.module_closure(__name__):
        digest.update(path.read_bytes())
    digest.update(json.dumps(pipelines, sort_keys=True).encode())
    digest.update(tracking.file_sha256(Path(cache_path)).encode())
    return digest.hexdigest()


def overlay_rows(val: SliceArrays, count: int) -> np.ndarray:
    """A fixed set of validation slices to watch during training: those with the most tumour."""
    tumour = (val.masks > 0).reshape(len(val), -1).sum(axis=1, dtype=np.int64)
    return np.argsort(-tumour, kind="stable")[:count]


class RunLogger:
    """The training loop's epoch callback: metrics every epoch, overlays every few epochs.

    The overlays always show the same validation slices (those with the most tumour), predicted
    as validation predicts (the run's eval normalisation, probability 0.5, no TTA).
    """

    def __init__(self, params: Params, val: SliceArrays, pipelines: dict[str, Any]):
        self.params = params
        self.watched = val.take(overlay_rows(val, params.run.overlay_slices))
        self.normaliser = eval_normaliser(pipelines)

    def __call__(self, epoch: int, row: dict[str, float], model: torch.nn.Module) -> None:
        tracking.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
        if epoch % self.params.run.overlay_every == 0 or epoch == self.params.epochs:
            tracking.log_image(self.overlays(model), f"overlays/val_epoch_{epoch:03d}.png")

    def overlays(self, model: torch.nn.Module) -> np.ndarray:
        watched = self.watched
        device = next(model.parameters()).device
        predictions = predict_labels(model, watched.images, self.normaliser, device, VALIDATION_THRESHOLD)
        classes = self.params.output_channels
        images = centre_slice(watched.images, self.params.data.context)
        panels = [overlay(images[i], watched.masks[i], predictions[i], classes) for i in range(len(watched))]
        titles = [f"{watched.patient[i]} #{watched.slice[i]}" for i in range(len(watched))]
        return figure_to_array(overlay_grid(panels, titles, columns=len(panels)))


def train_run(
    params: Params, run_name: str, out_dir: Path, tags: dict[str, str] | None = None, register: bool = False
) -> dict[str, Any]:
    """Train one model, tracked as one MLflow run; writes ``out_dir``/model.pt, train.json, history.csv.

    ``register`` adds the model to the registry as a version of ``glioseg-<dataset>``. Under
    torchrun every rank trains, and only rank 0 logs to MLflow and writes the outputs; the other
    ranks return ``{"rank": r}``.
    """
    arrays = load_cache(paths.CACHE)
    pipelines = load_pipelines()
    train, val = arrays.select("train"), arrays.select("val")
    if len(train) == 0 or len(val) == 0:
        raise DataError(f"{paths.SPLIT}: the train and val subsets must both hold slices")
    trainer = Trainer(params, train, val, pipelines, fingerprint(params, paths.CACHE, pipelines))
    checkpoints = out_dir / "checkpoints"
    if not trainer.world.main:
        trainer.fit(checkpoints)
        return {"rank": trainer.world.rank}
    with exclusive_lock(checkpoints, "training"):
        return _tracked_training(trainer, params, run_name, out_dir, tags or {}, arrays, register)


def _resumed_run(trainer: Trainer, checkpoints: Path) -> tuple[bool, str | None]:
    """Whether to resume ``last.pt``, and the MLflow run to continue.

    A checkpoint whose run is not in this store (a store switched, say to a team server) is not
    resumed: its epochs were logged elsewhere, and a run of the remaining epochs would lack them.
    """
    state = trainer.resumable_state(checkpoints)
    run_id = state.get("mlflow_run_id") if state else None
    if state is None or run_id is None or tracking.run_exists(run_id):
        return True, run_id
    print(
        f"warning: {checkpoints / 'last.pt'}: its MLflow run {run_id} is not in {tracking.tracking_uri()}; "
        "training starts over, logged to a new run",
        file=sys.stderr,
    )
    return False, None


def _tracked_training(
    trainer: Trainer,
    params: Params,
    run_name: str,
    out_dir: Path,
    tags: dict[str, str],
    arrays: SliceArrays,
    register: bool,
) -> dict[str, Any]:
    """Rank 0's side of :func:`train_run`: one MLflow run for the whole training, resumed runs included."""
    checkpoints = out_dir / "checkpoints"
    resume, run_id = _resumed_run(trainer, checkpoints)
    val = arrays.select("val")
    with tracking.start_run(run_name, params.flat(), tags, resume=run_id) as run:
        if run_id is None:
            if paths.AUGMENT_PREVIEW.is_file():
                tracking.log_artifact(paths.AUGMENT_PREVIEW, "augment")
            tracking.log_artifact(paths.AUGMENT, "augment")
            tracking.log_training_data(
                pd.DataFrame({"patient": arrays.patient, "slice": arrays.slice, "subset": arrays.subset}),
                name=f"{params.dataset}-{params.split.by}-split",
                source=str(paths.CACHE),
                tags={"cache_sha256": tracking.file_sha256(paths.CACHE)},
            )
        outcome = trainer.fit(
            checkpoints, RunLogger(params, val, trainer.pipelines), run_id=run.info.run_id, resume=resume
        )
        best = {**outcome.best, "meta": {**outcome.best["meta"], "mlflow_run_id": run.info.run_id}}
        save_checkpoint(out_dir / "model.pt", best)
        tracking.log_artifact(out_dir / "model.pt", "checkpoint")
        write_csv(out_dir / "history.csv", outcome.history)
        final = outcome.history.iloc[outcome.best_epoch - 1]
        summary = {
            "mlflow_run_id": run.info.run_id,
            "best_epoch": outcome.best_epoch,
            "train": {m: float(final[f"train_{m}"]) for m in CURVE_METRICS},
            "val": {m: float(final[f"val_{m}"]) for m in CURVE_METRICS},
        }
        failure = learning_failure(summary["train"]["dice_positive_slice"])
        summary["learned"] = failure is None
        if failure is not None:
            print(not_learned_warning(run_name, run.info.run_id, failure, params.lr, params.epochs), file=sys.stderr)
        write_json(out_dir / "train.json", summary)
        tracking.log_metrics({"best_epoch": outcome.best_epoch, "best_val_dice": summary["val"]["dice"]})
        curves = learning_curves(outcome.history, run_name)
        tracking.log_image(figure_to_array(curves), "curves/learning_curves.png")
        model = build_model(params.model)
        model.load_state_dict(best["state_dict"])
        tracking.log_model(model)
        if register:
            summary["registered_version"] = tracking.register_checkpoint(
                run.info.run_id,
                params.dataset,
                {
                    "data_manifest_sha256": tracking.file_sha256(paths.MANIFEST),
                    "best_epoch": str(outcome.best_epoch),
                    "val_dice": f"{summary['val']['dice']:.4f}",
                    **recorded_numerics(best["meta"]),
                },
            )
    return summary


def run(params: Params) -> dict[str, Any]:
    """The train stage: the main model -> models/model.pt, train.json, history.csv, a registered version."""
    return train_run(params, "train", paths.MODELS, register=True)
