"""The protocol stamped on every metrics file: how the split was made and what the model was scored with."""

from __future__ import annotations

from typing import Any

from glioseg.config.numerics import recorded_numerics
from glioseg.config.schema import Params
from glioseg.data.sites import held_out_site, sites
from glioseg.device import autocast_dtype, precision_name, select_device
from glioseg.model.checkpoint import LoadedModel, ModelSet


def split_protocol(params: Params, patients) -> dict[str, Any]:
    """How cases were split; for a site split, the held-out site among the sites of ``patients``."""
    split: dict[str, Any] = {"unit": params.split.by}
    if params.split.folds:
        split |= {"folds": params.split.folds, "fold": params.split.fold, "fold_is": params.split.fold_is}
    elif params.split.by == "site":
        split |= {
            "sites": len(sites(patients)),
            "fold": params.split.fold,
            "test_site": held_out_site(patients, params.split.fold),
        }
    return split


def stage_protocol(params: Params, loaded: LoadedModel | ModelSet, patients) -> dict[str, Any]:
    """What the metrics' protocol takes from the params, the cached patients and the model: how
    cases were split, how the model predicted, the precision and kernels it trained with and the
    precision it predicted in (each changes the numbers: :mod:`glioseg.config.numerics`)."""
    split = split_protocol(params, patients)
    device = select_device(params.run.device)
    return {
        "split": split,
        "inference": params.inference.model_dump(mode="json"),
        **recorded_numerics(loaded.meta),
        "inference_precision": precision_name(autocast_dtype(device, enabled=True)),
    }
