import json

import pytest

from glioseg.errors import ConfigError, DataError
from glioseg.evaluation.gate import check_metrics, compare, load_floors, main

RULES = """\
# metric: {min: absolute floor} or {tolerance: allowed drop below the baseline}
dice_patient_mean: {tolerance: 0.02}
dice_positive_slice_mean: {min: 0.5}
"""


@pytest.fixture
def files(tmp_path):
    """Write metrics, baseline and rules files; return their paths."""

    def write(current: dict, baseline: dict, rules: str = RULES):
        paths = tmp_path / "metrics.json", tmp_path / "baseline.json", tmp_path / "rules.yaml"
        paths[0].write_text(json.dumps(current))
        paths[1].write_text(json.dumps(baseline))
        paths[2].write_text(rules)
        return paths

    return write


# --- load_floors ---------------------------------------------------------------------------------


def test_load_floors_reads_rules(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(RULES + "iou_pooled: {min: 0.4, tolerance: '5e-2'}\n")
    assert load_floors(path) == {
        "dice_patient_mean": {"tolerance": 0.02},
        "dice_positive_slice_mean": {"min": 0.5},
        "iou_pooled": {"min": 0.4, "tolerance": 0.05},
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dice: {min: [1\n", "not valid YAML"),
        ("- dice\n", "expected a mapping"),
        ("", "expected a mapping"),
        ("dice: 0.5\n", "metric 'dice': expected"),
        ("dice: {floor: 0.5}\n", "metric 'dice': unknown key 'floor'"),
        ("dice: {min: high}\n", "metric 'dice': 'min' must be a number"),
        ("dice: {tolerance: -0.1}\n", "'tolerance' must be >= 0"),
    ],
)
def test_load_floors_rejects_bad_rules_naming_the_file(tmp_path, text, message):
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as error:
        load_floors(path)
    assert str(error.value).startswith(f"{path}: ")


def test_load_floors_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as error:
        load_floors(path)
    assert str(error.value) == f"{path}: metric rules file not found"


# --- compare -------------------------------------------------------------------------------------


def test_compare_tolerance_rule():
    # Floor = baseline - tolerance = 0.85 - 0.02 = 0.83.
    rules = {"dice": {"tolerance": 0.02}}
    failing = compare({"dice": 0.80}, {"dice": 0.85}, rules).iloc[0]
    assert failing["floor"] == pytest.approx(0.83)
    assert failing["delta"] == pytest.approx(-0.05)
    assert not failing["ok"]
    assert failing["note"] == "below floor by 0.03"

    passing = compare({"dice": 0.84}, {"dice": 0.85}, rules).iloc[0]
    assert passing["ok"]
    assert passing["note"] == ""


def test_compare_value_exactly_at_floor_passes():
    row = compare({"dice": 0.78}, {"dice": 0.80}, {"dice": {"tolerance": 0.02}}).iloc[0]
    assert row["ok"]


def test_compare_both_rules_use_the_higher_floor():
    # max(min 0.7, 0.85 - 0.2 = 0.65) = 0.7
    row = compare({"dice": 0.68}, {"dice": 0.85}, {"dice": {"min": 0.7, "tolerance": 0.2}}).iloc[0]
    assert row["floor"] == pytest.approx(0.7)
    assert not row["ok"]


def test_compare_min_rule_ignores_baseline_but_reports_it():
    table = compare({"dice": 0.6}, {}, {"dice": {"min": 0.5}})
    row = table.iloc[0]
    assert list(table.columns) == ["metric", "baseline", "current", "delta", "floor", "ok", "note"]
    assert row["ok"]
    assert row["floor"] == 0.5
    assert row["current"] == 0.6


def test_compare_missing_metric_fails_with_note():
    rules = {"dice": {"min": 0.5}, "iou": {"tolerance": 0.1}}
    table = compare({"iou": 0.5}, {"dice": 0.7}, rules).set_index("metric")
    assert not table.loc["dice", "ok"]
    assert table.loc["dice", "note"] == "missing from current metrics"
    assert not table.loc["iou", "ok"]
    assert table.loc["iou", "note"] == "missing from baseline"


@pytest.mark.parametrize("value", [None, "0.99", True, float("nan")])
def test_compare_non_number_fails_with_note(value):
    row = compare({"dice": value}, {}, {"dice": {"min": 0.5}}).iloc[0]
    assert not row["ok"]
    assert row["note"] == f"not a finite number in current metrics ({value!r})"


def test_compare_flattens_nested_metrics():
    row = compare({"test": {"dice": 0.8}}, {"test": {"dice": 0.8}}, {"test.dice": {"tolerance": 0.0}}).iloc[0]
    assert row["ok"]
    assert row["delta"] == 0.0


# --- check_metrics -------------------------------------------------------------------------------


def test_check_metrics_passes(files):
    current = {"dice_patient_mean": 0.80, "dice_positive_slice_mean": 0.70}
    baseline = {"dice_patient_mean": 0.81, "dice_positive_slice_mean": 0.72}
    passed, table = check_metrics(*files(current, baseline))
    assert passed
    header = [cell.strip() for cell in table.splitlines()[0].strip("|").split("|")]
    assert header == ["metric", "baseline", "current", "delta", "floor", "ok", "note"]
    assert "| dice_patient_mean " in table
    assert "0.7900" in table  # floor 0.81 - 0.02
    assert "FAIL" not in table


def test_check_metrics_fails_when_floor_above_current(files):
    current = {"dice_patient_mean": 0.80, "dice_positive_slice_mean": 0.40}
    baseline = {"dice_patient_mean": 0.80, "dice_positive_slice_mean": 0.40}
    passed, table = check_metrics(*files(current, baseline))
    assert not passed
    failing = [line for line in table.splitlines() if "FAIL" in line]
    assert len(failing) == 1
    assert "dice_positive_slice_mean" in failing[0]
    assert "below floor by 0.1" in failing[0]


def test_check_metrics_nested_metrics_and_missing_metric(files):
    rules = "test.dice: {min: 0.5}\ntest.iou: {min: 0.3}\n"
    passed, table = check_metrics(*files({"test": {"dice": 0.6}}, {"test": {"dice": 0.6}}, rules))
    assert not passed
    assert "missing from current metrics" in table


@pytest.mark.parametrize("which", [0, 1])
def test_check_metrics_missing_metrics_file_names_it(files, which):
    paths = files({"dice_patient_mean": 0.8}, {"dice_patient_mean": 0.8})
    paths[which].unlink()
    with pytest.raises(DataError) as error:
        check_metrics(*paths)
    assert str(error.value) == f"{paths[which]}: metrics file not found"


def test_check_metrics_bad_json_names_the_file(files):
    paths = files({}, {})
    paths[0].write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON") as error:
        check_metrics(*paths)
    assert str(paths[0]) in str(error.value)


def test_check_metrics_missing_rules_file(files):
    paths = files({}, {})
    paths[2].unlink()
    with pytest.raises(ConfigError, match="rules file not found"):
        check_metrics(*paths)


# --- main: the gate of ci/real_data_check.sh ------------------------------------------------------


def test_main_gates_on_the_class_baseline_or_else_on_the_min_floors(tmp_path, capsys):
    ci = tmp_path / "ci"
    ci.mkdir()
    (ci / "floors.yaml").write_text("dice: {tolerance: 0.02, min: 0.5}\n")
    (ci / "floors-brats.yaml").write_text("dice: {min: 0.75}\n")
    (ci / "baseline-real-fp32-avx2.json").write_text(json.dumps({"dice": 0.8}))
    metrics = tmp_path / "test.json"
    metrics.write_text(json.dumps({"dice": 0.7}))

    assert main([str(metrics), str(ci), "real", "fp32", "avx2"]) == 1  # 0.02 below the baseline at most
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "metrics check: FAILED" and "ci: no same-class baseline" not in out

    assert main([str(metrics), str(ci), "real", "fp32", "neon"]) == 0  # the min floor only
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        "ci: no same-class baseline ci/baseline-real-fp32-neon.json (CPU class neon, fp32): gated on "
        "the min floors of ci/floors.yaml only"
    )
    assert out[-1] == "metrics check: passed"

    assert main([str(metrics), str(ci), "brats", "fp32", "neon"]) == 1  # the kind's own rules
    assert "of ci/floors-brats.yaml only" in capsys.readouterr().out


def test_main_without_a_baseline_needs_a_min_floor(tmp_path, capsys):
    ci = tmp_path / "ci"
    ci.mkdir()
    (ci / "floors.yaml").write_text("dice: {tolerance: 0.02}\n")
    metrics = tmp_path / "test.json"
    metrics.write_text(json.dumps({"dice": 0.7}))

    assert main([str(metrics), str(ci), "real", "fp32", "neon"]) == 2
    assert capsys.readouterr().err == (
        f"error: {ci / 'floors.yaml'}: no min floors to gate CPU class neon on without its baseline\n"
    )
