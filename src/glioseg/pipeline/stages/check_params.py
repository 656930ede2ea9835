"""The check_params stage: params.yaml validated before any other stage can remove its outputs.

DVC removes a stage's outputs just before it runs the stage, so a stage that only then rejects a
param would lose them. This stage runs first (download depends on its stamp) and depends on the
whole params.yaml, so any edit, a misspelt key included, is validated here, and a bad one stops
`dvc repro` before anything is removed. The stamp's content never changes, so a valid edit
re-runs only the stages that track the changed params.
"""

from __future__ import annotations

from typing import Any

from glioseg import paths
from glioseg.config.schema import Params
from glioseg.io import write_text

STAMP = "params.yaml is valid (glioseg check_params stage)\n"


def run(params: Params) -> dict[str, Any]:
    write_text(paths.PARAMS_VALID, STAMP)
    return {"params": "valid", "dataset": params.dataset}
