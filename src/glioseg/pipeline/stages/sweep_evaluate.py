"""The sweep_evaluate@NAME stage: the model of sweep_train@NAME scored -> runs/NAME/metrics.json."""

from __future__ import annotations

from typing import Any

from glioseg import paths
from glioseg.config.schema import Params
from glioseg.io import write_json
from glioseg.pipeline.stages.evaluate import evaluate_run
from glioseg.training import distributed


def run(params: Params, name: str) -> dict[str, Any]:
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
