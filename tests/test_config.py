import pytest
import yaml

from glioseg.config import load_params, parse_params
from glioseg.errors import ConfigError


def test_defaults_validate():
    params = parse_params({})
    assert params.lr == pytest.approx(1e-4)
    assert params.batch_size == 10
    assert params.train.threshold == pytest.approx(0.3)


def test_dvc_written_float_string_is_coerced(tmp_path):
    # `dvc exp run -S lr=5e-5` writes `lr: 5e-05`, which PyYAML reads as a string.
    path = tmp_path / "params.yaml"
    path.write_text("lr: 5e-05\nepochs: 3\n")
    assert yaml.safe_load(path.read_text())["lr"] == "5e-05"
    params = load_params(path)
    assert params.lr == pytest.approx(5e-5)
    assert isinstance(params.lr, float)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"loss": "focal"}, "'loss'"),
        ({"lr": -1}, "'lr'"),
        ({"train": {"threshold": 1.5}}, "'train.threshold'"),
        ({"augment": {"image_size": 100}}, "'augment.image_size'"),
        ({"learning_rate": 0.1}, "unknown key 'learning_rate'"),
        ({"model": {"encoder_depth": 4}}, "model.decoder_channels"),
        ({"split": {"train": 0.5, "val": 0.1, "test": 0.2}}, "must be 1"),
    ],
)
def test_bad_params_name_the_key_in_one_line(raw, key):
    with pytest.raises(ConfigError) as info:
        parse_params(raw)
    message = str(info.value)
    assert key in message
    assert "\n" not in message


def test_sweep_overrides_only_what_it_sets():
    params = parse_params({"lr": 1e-3, "epochs": 7, "sweeps": {"slow": {"lr": 5e-5}, "d": {"loss": "dice"}}})
    slow = params.for_sweep("slow")
    assert (slow.lr, slow.epochs, slow.loss) == (5e-5, 7, "combined")
    assert params.for_sweep("d").loss == "dice"
    with pytest.raises(ConfigError, match="sweeps.nope"):
        params.for_sweep("nope")


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_project_params_file_is_valid():
    from pathlib import Path

    params = load_params(Path(__file__).parents[1] / "params.yaml")
    assert set(params.sweeps) == {"wbce", "dice", "lr_5e-4", "lr_5e-3"}
