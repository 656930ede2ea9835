"""How a DVC stage script runs its stage: validate params.yaml, call one library function, print its summary.

Each ``stages/<name>.py`` imports only the function its stage runs (and this module), so the
stage's code dependencies, derived from its imports (:mod:`glioseg.pipeline.codedeps`), are exactly the
modules that stage can execute. A user error, a full or read-only disk, and Ctrl-C each print
one line (exit code 2, or 130 for an interrupt); DVC keeps the outputs of the stage's last good
run in every case (:mod:`glioseg.pipeline.outputs`).
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from glioseg.config.schema import Params, load_params
from glioseg.errors import GliosegError
from glioseg.io import write_fault
from glioseg.pipeline import outputs as stage_outputs

StageFunction = Callable[..., dict[str, Any]]

# The pipeline's stages: stages/<name>.py runs the function ``run`` of glioseg.pipeline.stages.<name>.
# Imported on demand, so that importing this module adds nothing to a stage's code dependencies
# and the data stages do not pay for importing MLflow.
STAGES = (
    "check_params",
    "download",
    "clean",
    "labels",
    "split",
    "cache",
    "augment",
    "train",
    "evaluate",
    "sweep_train",
    "sweep_evaluate",
    "report",
)
DATA_STAGES = ("download", "clean", "labels", "split", "cache", "augment")
SWEEP_STAGES = ("sweep_train", "sweep_evaluate")


def stage_function(stage: str) -> StageFunction:
    """The function pipeline stage ``stage`` runs (imported on demand)."""
    return importlib.import_module(f"glioseg.pipeline.stages.{stage}").run


def run(function: StageFunction, *args: str, params_file: Path | None = None) -> dict[str, Any]:
    """``function(params, *args)`` with the validated params of ``params_file`` (default params.yaml).

    Under DVC, the stage's directory outputs are removed only once the params passed.
    """
    params: Params = load_params(params_file)
    stage_outputs.check_source_outside_outputs(params.data.source)
    stage_outputs.clear_directory_outputs(stage_outputs.current_stage())
    return function(params, *args)


def main(function: StageFunction, *args: str) -> None:
    """A stage script's body: run the stage and print its summary, or one error line and exit."""
    stage = stage_outputs.current_stage() or function.__name__
    try:
        summary = run(function, *args)
    except GliosegError as exc:
        _fail(f"error: {exc}", 2)
    except OSError as exc:
        fault = write_fault(exc, Path.cwd())
        if fault is None:
            raise
        _fail(f"error: {fault}; stage {stage} stopped, the outputs of its last good run are kept", 2)
    except KeyboardInterrupt:
        _fail(
            f"interrupted: stage {stage} stopped, the outputs of its last good run are kept; "
            "`dvc repro` carries on (a training resumes from its last checkpoint)",
            130,
        )
    print(json.dumps(summary, indent=2, default=str))


def _fail(line: str, code: int) -> None:
    print(line, file=sys.stderr)
    sys.exit(code)
