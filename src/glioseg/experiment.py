"""Stage-level orchestration: a training run with its MLflow run, evaluation, and sweep runs.

Stage scripts and the CLI call these; each function reads the pipeline's inputs from
:mod:`glioseg.paths`, writes its outputs atomically and returns what it wrote.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glioseg import distributed, paths, tracking
from glioseg.config import Params, flatten
from glioseg.data.cache import SliceArrays, load_cache
from glioseg.errors import DataError
from glioseg.evaluate import evaluate, write_outputs
from glioseg.inference import predict_labels
from glioseg.io import read_json, write_csv, write_json
from glioseg.model import build_model, load_model, save_checkpoint
from glioseg.train import CURVE_METRICS, Trainer
from glioseg.transforms import BatchAugment, pipelines_from_dict
from glioseg.viz import figure_to_array, learning_curves, overlay, overlay_grid


def load_pipelines(path: Path = paths.AUGMENT) -> dict[str, Any]:
    if not Path(path).is_file():
        raise DataError(f"{path}: augmentation pipeline not found (run `dvc repro augment`)")
    return read_json(path)


TRAINING_CODE = ("train.py", "losses.py", "model.py", "transforms.py", "inference.py", "metrics.py", "distributed.py")


def fingerprint(params: Params, cache_path: Path, pipelines: dict) -> str:
    """What a resumable checkpoint must match: params, pipelines, cached data and the training code.

    A checkpoint left by other code is not resumed: DVC re-runs train when that code changes,
    and the run must then really train again.
    """
    digest = hashlib.sha256(json.dumps(params.model_dump(), sort_keys=True, default=str).encode())
    package = Path(__file__).parent
    for name in TRAINING_CODE:
        digest.update((package / name).read_bytes())
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
    with the run's own eval normalisation and threshold.
    """

    def __init__(self, params: Params, val: SliceArrays, pipelines: dict[str, Any]):
        self.params = params
        self.watched = val.take(overlay_rows(val, params.train.overlay_slices))
        self.normaliser = BatchAugment.from_pipeline(pipelines_from_dict(pipelines)["eval"])

    def __call__(self, epoch: int, row: dict[str, float], model: torch.nn.Module) -> None:
        tracking.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
        if epoch % self.params.train.overlay_every == 0 or epoch == self.params.epochs:
            tracking.log_image(self.overlays(model), f"overlays/val_epoch_{epoch:03d}.png")

    def overlays(self, model: torch.nn.Module) -> np.ndarray:
        watched = self.watched
        device = next(model.parameters()).device
        predictions = predict_labels(model, watched.images, self.normaliser, device, self.params.train.threshold)
        classes = self.params.output_channels
        panels = [overlay(watched.images[i], watched.masks[i], predictions[i], classes) for i in range(len(watched))]
        titles = [f"{watched.patient[i]} #{watched.slice[i]}" for i in range(len(watched))]
        return figure_to_array(overlay_grid(panels, titles, columns=len(panels)))


def train_run(params: Params, run_name: str, out_dir: Path, tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Train one model, tracked as one MLflow run; writes ``out_dir``/model.pt, train.json, history.csv.

    Under torchrun every rank trains, and only rank 0 logs to MLflow and writes the outputs; the
    other ranks return ``{"rank": r}``.
    """
    arrays = load_cache(paths.CACHE)
    pipelines = load_pipelines()
    train, val = arrays.select("train"), arrays.select("val")
    if len(train) == 0 or len(val) == 0:
        raise DataError(f"{paths.SPLIT}: the train and val subsets must both hold slices")
    trainer = Trainer(params, train, val, pipelines, fingerprint(params, paths.CACHE, pipelines))
    if not trainer.world.main:
        trainer.fit(out_dir / "checkpoints")
        return {"rank": trainer.world.rank}

    with tracking.start_run(run_name, params.flat(), tags or {}) as run:
        if paths.AUGMENT_PREVIEW.is_file():
            tracking.log_artifact(paths.AUGMENT_PREVIEW, "augment")
        tracking.log_artifact(paths.AUGMENT, "augment")
        outcome = trainer.fit(out_dir / "checkpoints", RunLogger(params, val, pipelines))
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
        write_json(out_dir / "train.json", summary)
        tracking.log_metrics({"best_epoch": outcome.best_epoch, "best_val_dice": summary["val"]["dice"]})
        curves = learning_curves(outcome.history, run_name)
        tracking.log_image(figure_to_array(curves), "curves/learning_curves.png")
        model = build_model(params.model)
        model.load_state_dict(best["state_dict"])
        tracking.log_model(model)
    return summary


def evaluate_run(model_path: Path, subsets: tuple[str, ...], out_dir: Path | None, device: str) -> dict[str, Any]:
    """Evaluate a model on cached subsets; log the results to the model's own MLflow run.

    Returns ``{subset: summary}``; with ``out_dir`` the first subset's CSVs and overlays are
    written there too.
    """
    loaded = load_model(model_path)
    arrays = load_cache(paths.CACHE)
    results: dict[str, Any] = {}
    images: dict[str, np.ndarray] = {}
    for subset in subsets:
        part = arrays.select(subset)
        if len(part) == 0:
            raise DataError(f"{paths.SPLIT}: the {subset} subset is empty")
        result = evaluate(loaded, part, device)
        results[subset] = result.summary
        if out_dir is not None and subset == subsets[0]:
            images = write_outputs(result, part, out_dir)
    run_id = loaded.meta.get("mlflow_run_id")
    if run_id:
        flat = {f"{subset}_{k}": v for subset, summary in results.items() for k, v in flatten(summary).items()}
        tracking.log_to_run(run_id, flat, images)
    return {"mlflow_run_id": run_id, **results}


def evaluate_stage(params: Params) -> dict[str, Any]:
    """The evaluate stage: the main model on the test (and train) patients -> metrics/test.json.

    Under torchrun rank 0 evaluates alone; the other ranks return ``{"rank": r}`` at once.
    """
    if distributed.launched_rank() != 0:
        return {"rank": distributed.launched_rank()}
    result = evaluate_run(paths.MODEL, ("test", "train"), paths.EVALUATION, params.train.device)
    write_json(paths.TEST_METRICS, {"test": result["test"], "train": result["train"]})
    return result


def sweep_run(params: Params, name: str) -> dict[str, Any]:
    """Train and evaluate one configuration of the report's comparison tables.

    Under torchrun every rank trains; rank 0 alone evaluates and writes, the others return ``{"rank": r}``.
    """
    config = params.for_sweep(name)
    out_dir = paths.sweep_dir(name)
    trained = train_run(config, f"sweep-{name}", out_dir, {"sweep": name})
    if "rank" in trained:
        return trained
    evaluated = evaluate_run(out_dir / "model.pt", ("train", "test"), None, config.train.device)
    result = {
        "name": name,
        "loss": config.loss,
        "lr": config.lr,
        "epochs": config.epochs,
        "mlflow_run_id": trained["mlflow_run_id"],
        "train": evaluated["train"],
        "test": evaluated["test"],
    }
    write_json(out_dir / "metrics.json", result)
    return result

