"""A run that did not learn says so: one warning line from the train stage, `learned: false` in train.json."""

from __future__ import annotations

from glioseg.evaluation.learning import learning_failure
from glioseg.io import read_json
from glioseg.pipeline.stages import train as experiment
from tests.test_run_continuity import project  # noqa: F401  (the fixture: a tiny synthetic set's data stages)


def test_the_rule_names_each_way_of_not_learning():
    assert learning_failure(0.85, 0.9, 0.99) is None
    assert learning_failure(0.05) == "its training Dice on slices with tumour is 0.05"
    assert learning_failure(0.0, 0.0, 1.0) == "it predicts no tumour at all (training sensitivity 0)"
    assert learning_failure(0.02, 1.0, 0.1) == "it predicts tumour on most pixels (training specificity 0.10)"
    assert learning_failure(float("nan")) is None  # no slice with tumour: nothing to judge by


def test_a_tiny_learning_rate_warns_naming_the_run(project, capsys):  # noqa: F811
    summary = experiment.run(project.model_copy(update={"lr": 1e-7, "epochs": 2}))
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: run train")]
    assert read_json("models/train.json")["learned"] is False
    assert warnings == [
        f"warning: run train (MLflow {summary['mlflow_run_id']}) did not learn: "
        f"{learning_failure(summary['train']['dice_positive_slice'])} after 2 epochs at lr 1e-07; "
        "the learning rate is likely too small for this many epochs (or too large): "
        "try another lr or more epochs"
    ]
