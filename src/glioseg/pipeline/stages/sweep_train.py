"""The sweep_train@NAME stage: the configuration sweeps.NAME trained -> runs/NAME/."""

from __future__ import annotations

from typing import Any

from glioseg import paths
from glioseg.config.schema import Params
from glioseg.pipeline.stages import train


def run(params: Params, name: str) -> dict[str, Any]:
    """The sweep_train@NAME stage: the configuration ``sweeps.NAME`` trained -> runs/NAME/.

    Under torchrun every rank trains; rank 0 alone writes, the others return ``{"rank": r}``.
    """
    return train.train_run(params.for_sweep(name), f"sweep-{name}", paths.sweep_dir(name), {"sweep": name})
