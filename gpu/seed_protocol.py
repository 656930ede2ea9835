"""One seeded training on a GPU without DVC or MLflow: ``python -m gpu.seed_protocol``.

The lent GPU machine has neither DVC nor MLflow. This runs what ``dvc repro evaluate`` runs for a
params profile (composed onto the defaults, as ``glioseg params`` does), through the same
functions: the data stages (``glioseg.pipeline.stages``, in a scratch working folder),
:class:`glioseg.training.loop.Trainer` and :func:`glioseg.evaluation.evaluate.evaluate`, and writes one JSON: data
counts, device, seconds per epoch and in all, training images/s, CUDA peak memory, the test
and train metrics (``metrics/test.json``'s definitions) and the per-patient test Dice, which
:mod:`gpu.cv_pool` pools over the folds of a cross-validation. ``--data`` replaces the params'
``data.source`` (an unpacked kit: gpu/unpack.py); ``--set KEY=VALUE`` overrides a key after the
profile, as ``glioseg params --set`` does (``--set split.folds=5 --set split.fold=2``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from glioseg import paths
from glioseg.config.compose import compose_params
from glioseg.config.schema import parse_params
from glioseg.data.cache import load_cache
from glioseg.errors import GliosegError
from glioseg.evaluation.evaluate import evaluate
from glioseg.model.checkpoint import load_model, save_checkpoint
from glioseg.pipeline.runner import DATA_STAGES, stage_function
from glioseg.pipeline.stages.train import load_pipelines
from glioseg.training.loop import Trainer


def run(params_file: Path, data: Path, overrides: list[str], workdir: Path) -> dict[str, Any]:
    given = {"data": {"source": str(Path(data).resolve())}}
    params = parse_params(compose_params(params_file, given, overrides=overrides))
    with contextlib.chdir(workdir):
        stages = {stage: stage_function(stage)(params) for stage in DATA_STAGES}
        arrays = load_cache(paths.CACHE)
        pipelines = load_pipelines()
    train, val = arrays.select("train"), arrays.select("val")
    trainer = Trainer(params, train, val, pipelines, fingerprint="gpu-seed-protocol")
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.device)
    began = time.perf_counter()
    outcome = trainer.fit(workdir / "checkpoints")
    seconds = time.perf_counter() - began
    save_checkpoint(workdir / "model.pt", outcome.best)
    loaded = load_model(workdir / "model.pt")
    history = outcome.history
    test = evaluate(loaded, arrays.select("test"), params.run.device)
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "params": str(params_file),
        "overrides": overrides,
        "device": str(trainer.device),
        "device_name": torch.cuda.get_device_name(trainer.device) if trainer.device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "precision": str(trainer.precision),
        "image_size": params.augment.image_size,
        "batch_size": params.batch_size,
        "epochs": params.epochs,
        "data_stages": stages,
        "train_slices": len(train),
        "training_seconds": round(seconds, 2),
        "epoch_seconds": [round(s, 3) for s in history["seconds"]],
        "train_images_per_s": round(len(train) * params.epochs / seconds, 1),
        "cuda_max_allocated_mib": (
            round(torch.cuda.max_memory_allocated(trainer.device) / 2**20, 1) if trainer.device.type == "cuda" else None
        ),
        "best_epoch": outcome.best_epoch,
        "history": history.to_dict("records"),
        "test": test.summary,
        "train": evaluate(loaded, train, params.run.device).summary,
        "test_per_patient": test.region_rows(test.per_patient)[["patient", "dice"]].to_dict("records"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpu.seed_protocol", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--params",
        type=Path,
        default=Path("profiles/seed-gpu.yaml"),
        help="a profile: its differences from the defaults",
    )
    parser.add_argument("--data", type=Path, required=True, help="a kaggle_3m folder")
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override one dotted key after the profile (YAML value), e.g. --set epochs=1",
    )
    parser.add_argument("--json", type=Path, required=True, help="where to write the results")
    args = parser.parse_args(argv)
    out = args.json.resolve()
    params_file = args.params.resolve()
    try:
        with tempfile.TemporaryDirectory(prefix="glioseg-seed-") as workdir:
            result = run(params_file, args.data, args.overrides, Path(workdir))
    except GliosegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    test = result["test"]
    print(
        f"{result['device_name']}: {result['epochs']} epochs in {result['training_seconds']:.1f} s "
        f"({result['train_images_per_s']:.0f} images/s); test Dice per patient "
        f"{test.get('dice_patient_mean', float('nan')):.3f}; wrote {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
