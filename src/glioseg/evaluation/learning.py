"""Whether a run learned: the one rule by which the train stage warns and the report marks a row.

A run that did not learn (a learning rate far too small or too large for its epochs) ends with a
model that predicts tumour on no pixel, or on most of them; either way its training-set Dice over
the slices that hold tumour is near zero (a per-patient mean is not: a model that predicts
nothing scores 1 on every tumour-free patient). Read as a result, its table row misleads, so the
run is named instead.
"""

from __future__ import annotations

NOT_LEARNED_DICE = 0.2  # far under any model that learned; predicting everything scores about 2p/(1+p)
MOST_PIXELS = 0.5  # a specificity under this: tumour predicted on most tumour-free pixels


def learning_failure(dice: float, sensitivity: float | None = None, specificity: float | None = None) -> str | None:
    """Why training-set figures say a run did not learn, or None when it learned: ``dice`` over
    the slices with tumour and, where known, sensitivity and specificity over pixels."""
    if specificity is not None and specificity < MOST_PIXELS:
        return f"it predicts tumour on most pixels (training specificity {specificity:.2f})"
    if sensitivity is not None and sensitivity == 0:
        return "it predicts no tumour at all (training sensitivity 0)"
    if dice < NOT_LEARNED_DICE:
        return f"its training Dice on slices with tumour is {dice:.2f}"
    return None


def not_learned_warning(run_name: str, run_id: str, reason: str, lr: float, epochs: int) -> str:
    """The train stage's one warning line for a run that did not learn."""
    return (
        f"warning: run {run_name} (MLflow {run_id}) did not learn: {reason} after {epochs} epochs at lr {lr:g}; "
        "the learning rate is likely too small for this many epochs (or too large): try another lr or more "
        "epochs"
    )
