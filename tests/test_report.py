"""The report's tables: rows from the runs there are, an empty table (not a crash) where there are none."""

from glioseg.config.schema import Params
from glioseg.pipeline.stages.report import RUN_COLUMNS, RunResult, comparison_plot, loss_table, lr_table, metrics_table

SUMMARY = {
    "dice_patient_mean": 0.5,
    "iou_patient_mean": 0.4,
    "dice_positive_slice_mean": 0.45,
    "ci95": {"dice_patient_mean": {"low": 0.3125, "high": 0.6875}},
}


def run(loss: str, lr: float, epochs: int = 16) -> RunResult:
    return RunResult("train", loss, lr, epochs, "r1", SUMMARY, SUMMARY)


def test_without_a_combined_loss_run_the_learning_rate_table_is_empty_and_the_figure_draws():
    runs = [run("dice", 1e-3)]
    lrs = lr_table(runs)
    assert list(lrs.columns) == ["lr", "epochs", *RUN_COLUMNS] and len(lrs) == 0
    losses = loss_table(runs, Params(loss="dice", lr=1e-3, epochs=16))
    assert losses.set_index("loss").loc["Dice", "test Dice"] == 0.5
    assert len(comparison_plot(losses, lrs).axes) == 2


def test_the_learning_rate_table_has_a_row_per_combined_configuration():
    lrs = lr_table([run("combined", 1e-3), run("combined", 5e-4, 22), run("dice", 1e-3)])
    assert lrs[["lr", "epochs"]].values.tolist() == [["0.0005", 22], ["0.001", 16]]
    assert lrs["test Dice 95% CI"].tolist() == ["[0.312, 0.688]"] * 2  # both tables show the interval
    losses = loss_table([run("dice", 1e-3)], Params(loss="dice", lr=1e-3, epochs=16)).set_index("loss")
    assert losses.loc["Dice", "test Dice 95% CI"] == "[0.312, 0.688]"


def test_the_metrics_table_shows_test_intervals_beside_the_values():
    table = metrics_table({"test": {**SUMMARY, "patients": 4, "protocol": {}}, "train": SUMMARY}).set_index("metric")
    assert "ci95" not in table.index and "protocol" not in table.index
    assert table.loc["dice_patient_mean", "test 95% CI"] == "[0.312, 0.688]"
    assert table.loc["iou_patient_mean", "test 95% CI"] == ""
    assert table.loc["patients", "test"] == "4"


def test_a_run_that_did_not_learn_is_marked_in_its_row():
    everywhere = {**SUMMARY, "dice_positive_slice_mean": 0.03, "sensitivity": 1.0, "specificity": 0.09}
    nothing = {**SUMMARY, "dice_positive_slice_mean": 0.0, "sensitivity": 0.0, "specificity": 1.0}
    runs = [
        run("combined", 1e-3),
        RunResult("lr_low", "combined", 5e-5, 16, "r2", everywhere, SUMMARY),
        RunResult("lr_high", "combined", 5e-3, 16, "r3", nothing, SUMMARY),
    ]
    learned = lr_table(runs).set_index("lr")["learned"]
    assert learned["0.001"] == "yes"
    assert learned["5e-05"] == "**no**: it predicts tumour on most pixels (training specificity 0.09)"
    assert learned["0.005"] == "**no**: it predicts no tumour at all (training sensitivity 0)"
