"""A fold ensemble scored against its members: ``glioseg evaluate --model A --model B ...``.

Each model alone and the :class:`~glioseg.model.checkpoint.ModelSet` of all of them are scored by the one
evaluation path (:func:`glioseg.evaluation.evaluate.evaluate`) on a cached subset of the pipeline, with the
params' inference settings, so the table says what averaging the folds' probabilities gains over
the best single fold.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from glioseg import paths
from glioseg.config.schema import Params
from glioseg.data.cache import load_cache
from glioseg.errors import DataError
from glioseg.evaluation.evaluate import evaluate
from glioseg.evaluation.protocol import stage_protocol
from glioseg.model.checkpoint import LoadedModel, ModelSet
from glioseg.model.specs import load_model_spec

COMPARED = ("dice_patient_mean", "dice_pooled", "dice_positive_slice_mean", "iou_patient_mean", "hd95_patient_mean")


def check_reads_cache(name: str, loaded: LoadedModel, params: Params) -> None:
    """A model scored on the pipeline's cache must have been trained on slices windowed as the cache's are:
    the arrays carry no record of their window, and the model would read other intensities than it learnt."""
    if loaded.window != params.data.window:
        raise DataError(
            f"{name}: trained with data.window {window_text(loaded.window)}, but this pipeline's "
            f"cache (data/cache) was built with data.window {window_text(params.data.window)}"
        )


def window_text(window: tuple[float, float] | None) -> str:
    return "null" if window is None else str(list(window))


def compare_models(names: list[str], subset: str, params: Params) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Each model of ``names`` alone and, for several, their ensemble (:class:`ModelSet`), scored on a
    cached subset with ``params.inference``: one table row per model, and every summary by name.

    Models that were not trained on this pipeline's split may have seen the subset's patients:
    the comparison is only fair on a subset none of them trained on (a held-out test split).
    """
    arrays = load_cache(paths.CACHE)
    part = arrays.select(subset)
    if len(part) == 0:
        raise DataError(f"{paths.SPLIT}: the {subset} subset is empty")
    members = [load_model_spec(name) for name in names]
    for name, member in zip(names, members):
        check_reads_cache(name, member, params)
    candidates: list[tuple[str, LoadedModel | ModelSet, list[str]]] = [
        (name, member, [name]) for name, member in zip(names, members)
    ]
    if len(members) > 1:
        candidates.append((f"ensemble of {len(members)}", ModelSet(tuple(members), tuple(names)), names))
    rows, summaries = [], {}
    for name, loaded, models in candidates:
        summary = evaluate(loaded, part, params.run.device, params.inference).summary
        summary["protocol"] |= stage_protocol(params, loaded, arrays.patient) | {"models": list(models)}
        summaries[name] = summary
        row = {"model": name, "patients": summary["patients"]}
        for metric in COMPARED:
            row[metric] = summary.get(metric)
            if metric in summary.get("ci95", {}):
                row[f"{metric} 95% CI"] = "[{low:.3f}, {high:.3f}]".format(**summary["ci95"][metric])
        rows.append(row)
    return pd.DataFrame(rows), summaries
