"""The evaluation stages: a trained model scored on cached subsets, with the results logged to its MLflow run
(or, for inference settings other than those the model file carries, to a run nested under it).

Evaluation tracks the inference params (``inference``) and the inference code only, so changing
TTA, the threshold or the post-processing re-runs these stages and the report, never training.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from glioseg import distributed, paths, tracking
from glioseg.config import Params, flatten
from glioseg.data.cache import load_cache
from glioseg.data.sites import held_out_site, sites
from glioseg.errors import DataError
from glioseg.evaluate import evaluate, write_outputs
from glioseg.inference import autocast_dtype, precision_name, select_device
from glioseg.io import write_json
from glioseg.model import LoadedModel, load_model
from glioseg.numerics import recorded_numerics


def split_protocol(params: Params, patients) -> dict[str, Any]:
    """How cases were split; for a site split, the held-out site among the sites of ``patients``."""
    split: dict[str, Any] = {"unit": params.split.by}
    if params.split.folds:
        split |= {"folds": params.split.folds, "fold": params.split.fold, "fold_is": params.split.fold_is}
    elif params.split.by == "site":
        split |= {"sites": len(sites(patients)), "fold": params.split.fold,
                  "test_site": held_out_site(patients, params.split.fold)}
    return split


def stage_protocol(params: Params, loaded: LoadedModel, patients) -> dict[str, Any]:
    """What the metrics' protocol takes from the params, the cached patients and the model: how
    cases were split, how the model predicted, the precision and kernels it trained with and the
    precision it predicted in (each changes the numbers: :mod:`glioseg.numerics`)."""
    split = split_protocol(params, patients)
    device = select_device(params.run.device)
    return {"split": split, "inference": params.inference.model_dump(mode="json"),
            **recorded_numerics(loaded.meta),
            "inference_precision": precision_name(autocast_dtype(device, enabled=True))}


def evaluate_run(
    model_path: Path, subsets: tuple[str, ...], out_dir: Path | None, params: Params
) -> dict[str, Any]:
    """Evaluate a model on cached subsets with ``params.inference``; log the results under the model's MLflow run
    (to the run itself only with the inference settings the model file carries: :func:`tracking.log_evaluation`).

    Returns ``{subset: summary}``, each summary with its ``protocol``; with ``out_dir`` the first
    subset's CSVs and overlays are written there too.
    """
    loaded = load_model(model_path)
    run_id = loaded.meta.get("mlflow_run_id")
    if run_id:
        tracking.require_run(run_id, str(model_path))  # now, not after the evaluation's minutes
    arrays = load_cache(paths.CACHE)
    protocol = stage_protocol(params, loaded, arrays.patient)
    results: dict[str, Any] = {}
    images: dict[str, Any] = {}
    tables: dict[str, str] = {}
    for subset in subsets:
        part = arrays.select(subset)
        if len(part) == 0:
            raise DataError(f"{paths.SPLIT}: the {subset} subset is empty")
        result = evaluate(loaded, part, params.run.device, params.inference)
        summary = result.summary
        summary["protocol"] = {**summary.get("protocol", {}), **protocol}
        results[subset] = summary
        tables[tracking.PER_PATIENT_ARTIFACT.format(subset=subset)] = result.per_patient.to_csv(index=False)
        if out_dir is not None and subset == subsets[0]:
            images = write_outputs(result, part, out_dir)
    if run_id:
        flat = {f"{subset}_{k}": v for subset, summary in results.items() for k, v in flatten(summary).items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}
        numerics = recorded_numerics(loaded.meta)
        site = {"test_site": protocol["split"]["test_site"], "split_sites": str(protocol["split"]["sites"])} \
            if "test_site" in protocol["split"] else {}
        settings, own = params.inference.model_dump(mode="json"), loaded.inference.model_dump(mode="json")
        logged = tracking.log_evaluation(run_id, settings, own, flat, images, numerics | site, tables)
        if logged != run_id:
            print(f"note: {model_path} carries inference settings {own}; this evaluation with {settings} is "
                  f"logged to MLflow run {logged}, nested under the model's run {run_id}", file=sys.stderr)
    return {"mlflow_run_id": run_id, **results}


def evaluate_stage(params: Params) -> dict[str, Any]:
    """The evaluate stage: the main model on the test (and train) patients -> metrics/test.json.

    Under torchrun rank 0 evaluates alone; the other ranks return ``{"rank": r}`` at once.
    """
    if distributed.launched_rank() != 0:
        return {"rank": distributed.launched_rank()}
    result = evaluate_run(paths.MODEL, ("test", "train"), paths.EVALUATION, params)
    write_json(paths.TEST_METRICS, {"test": result["test"], "train": result["train"]})
    return result


def sweep_evaluate_stage(params: Params, name: str) -> dict[str, Any]:
    """The sweep_evaluate@NAME stage: the model of sweep_train@NAME scored -> runs/NAME/metrics.json.

    Under torchrun rank 0 evaluates alone; the other ranks return ``{"rank": r}`` at once.
    """
    if distributed.launched_rank() != 0:
        return {"rank": distributed.launched_rank()}
    config = params.for_sweep(name)
    evaluated = evaluate_run(paths.sweep_dir(name) / "model.pt", ("train", "test"), None, config)
    result = {
        "name": name,
        "loss": config.loss,
        "lr": config.lr,
        "epochs": config.epochs,
        "mlflow_run_id": evaluated["mlflow_run_id"],
        "train": evaluated["train"],
        "test": evaluated["test"],
    }
    write_json(paths.sweep_dir(name) / "metrics.json", result)
    return result
