"""The evaluation stages: a trained model scored on cached subsets, with the results logged to its MLflow run
(or, for inference settings other than those the model file carries, to a run nested under it).

Evaluation tracks the inference params (``inference``) and the inference code only, so changing
TTA, the threshold or the post-processing re-runs these stages and the report, never training.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from glioseg import paths
from glioseg.config.numerics import recorded_numerics
from glioseg.config.schema import Params, flatten
from glioseg.data.cache import load_cache
from glioseg.errors import DataError
from glioseg.evaluation.evaluate import evaluate, write_outputs
from glioseg.evaluation.protocol import stage_protocol
from glioseg.io import write_json
from glioseg.model.checkpoint import load_model
from glioseg.tracking import store as tracking
from glioseg.training import distributed


def evaluate_run(model_path: Path, subsets: tuple[str, ...], out_dir: Path | None, params: Params) -> dict[str, Any]:
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
        flat = {
            f"{subset}_{k}": v
            for subset, summary in results.items()
            for k, v in flatten(summary).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        numerics = recorded_numerics(loaded.meta)
        site = (
            {"test_site": protocol["split"]["test_site"], "split_sites": str(protocol["split"]["sites"])}
            if "test_site" in protocol["split"]
            else {}
        )
        settings, own = params.inference.model_dump(mode="json"), loaded.inference.model_dump(mode="json")
        logged = tracking.log_evaluation(run_id, settings, own, flat, images, numerics | site, tables)
        if logged != run_id:
            print(
                f"note: {model_path} carries inference settings {own}; this evaluation with {settings} is "
                f"logged to MLflow run {logged}, nested under the model's run {run_id}",
                file=sys.stderr,
            )
    return {"mlflow_run_id": run_id, **results}


def run(params: Params) -> dict[str, Any]:
    """The evaluate stage: the main model on the test (and train) patients -> metrics/test.json.

    Under torchrun rank 0 evaluates alone; the other ranks return ``{"rank": r}`` at once.
    """
    if distributed.launched_rank() != 0:
        return {"rank": distributed.launched_rank()}
    result = evaluate_run(paths.MODEL, ("test", "train"), paths.EVALUATION, params)
    write_json(paths.TEST_METRICS, {"test": result["test"], "train": result["train"]})
    return result
