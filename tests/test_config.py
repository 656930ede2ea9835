from pathlib import Path

import pytest
import yaml

from glioseg.config.compose import compose_params, params_yaml, schema_defaults
from glioseg.config.schema import load_params, parse_params
from glioseg.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
PROFILES = sorted([*REPO.glob("profiles/*.yaml"), *REPO.glob("ci/profile-*.yaml")])


def test_defaults_validate():
    params = parse_params({})
    assert params.lr == pytest.approx(1e-3)
    assert params.batch_size == 10
    assert params.inference.threshold == pytest.approx(0.3)


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
        ({"inference": {"threshold": 1.5}}, "'inference.threshold'"),
        ({"augment": {"image_size": 100}}, "'augment.image_size'"),
        ({"augment": {"image_size": 64, "crop": 48}}, "'augment.crop'"),
        ({"augment": {"image_size": 64, "crop": 96}}, "augment.crop (96) is larger than augment.image_size (64)"),
        ({"learning_rate": 0.1}, "unknown key 'learning_rate'"),
        ({"model": {"encoder_depth": 4}}, "model.decoder_channels"),
        ({"split": {"train": 0.5, "val": 0.1, "test": 0.2}}, "must be 1"),
        ({"lr": float("inf")}, "key 'lr': Input should be a finite number (got inf)"),
        ({"train": {"clip_grad_norm": float("inf")}}, "key 'train.clip_grad_norm': Input should be a finite number"),
        ({"train": {"ema": 0}}, "'train.ema'"),
        ({"train": {"ema": 1}}, "'train.ema'"),
        ({"train": {"ema": -0.5}}, "'train.ema'"),
        ({"data": {"window": [99, 10]}}, "key 'data.window': percentiles must satisfy 0 <= low < high <= 100"),
        ({"data": {"window": [1, 101]}}, "'data.window'"),
        ({"data": {"window": [1]}}, "'data.window"),
        ({"dataset": "brats", "data": {"window": [1, 99]}}, "data.window applies to LGG slices"),
        ({"data": {"brats": {"percentiles": [50, 50]}}}, "'data.brats.percentiles'"),
        ({"augment": {"hflip": float("nan")}}, "key 'augment.hflip': Input should be a finite number"),
        ({"epochs": True}, "key 'epochs': expected a number, not true/false (got True)"),
        ({"sweeps": {"slow": {"epochs": False}}}, "key 'sweeps.slow.epochs': expected a number, not true/false"),
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
    bad.write_text("seed: 1\nlr: [1\nloss: dice\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML at line 3, column 5:"):
        load_params(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n")
    with pytest.raises(ConfigError, match=r"empty\.yaml: empty; it must hold the params"):
        load_params(empty)


def test_project_params_file_is_valid():
    params = load_params(REPO / "params.yaml")
    assert set(params.sweeps) == {"wbce", "dice", "lr_5e-4", "lr_5e-3"}


def test_params_yaml_is_the_schema_defaults():
    # Compared as read: params.yaml writes floats with a dot (0.0005), as YAML 1.1 reads 5e-4 as a string.
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert raw == schema_defaults()
    assert compose_params() == raw


def test_composed_params_read_back_the_same():
    tree = compose_params(REPO / "profiles/seed-gpu.yaml", overrides=["lr=5e-5"])
    assert yaml.safe_load(params_yaml(tree)) == tree


@pytest.mark.parametrize("profile", PROFILES, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_profile_composes_and_validates(profile):
    tree = compose_params(profile)
    assert parse_params(tree) == load_params(profile)
    assert set(tree) == set(schema_defaults())


def _keys(tree: dict, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a nested mapping, outer keys first."""
    paths = []
    for key, value in tree.items():
        paths.append((*prefix, key))
        if isinstance(value, dict):
            paths += _keys(value, (*prefix, key))
    return paths


def _without(tree: dict, path: tuple) -> dict:
    if len(path) == 1:
        return {key: value for key, value in tree.items() if key != path[0]}
    return {**tree, path[0]: _without(tree[path[0]], path[1:])}


@pytest.mark.parametrize("profile", PROFILES, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_profile_holds_only_differences_from_the_defaults(profile):
    """Leaving out any one key of a profile changes what it composes to: it repeats no default."""
    overlay = yaml.safe_load(profile.read_text())
    composed = compose_params(overlay)
    for path in _keys(overlay):
        try:
            changed = compose_params(_without(overlay, path)) != composed
        except ConfigError:
            changed = True
        assert changed, f"{profile.name}: '{'.'.join(map(str, path))}' repeats the default"


def test_overlays_apply_in_order_and_set_wins(tmp_path):
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text("epochs: 3\ntrain:\n  keep: last\n  weight_map: {w0: 2.0}\n")
    second.write_text("epochs: 4\ntrain:\n  weight_map: {sigma: 1.5}\n")
    tree = compose_params(first, second, overrides=["epochs=9", "lr=5e-5", "data.source=/data/kaggle_3m"])
    assert tree["epochs"] == 9 and tree["lr"] == 5e-5 and tree["data"]["source"] == "/data/kaggle_3m"
    assert tree["train"]["keep"] == "last"  # sections merge key by key
    assert tree["train"]["weight_map"] == {"w0": 2.0, "sigma": 1.5, "class_balance": False}
    assert compose_params(second, first)["epochs"] == 3


def test_a_profiles_sweeps_replace_the_defaults_and_set_changes_one_entry():
    tree = compose_params({"sweeps": {"fast": {"lr": 0.01}}}, overrides=["sweeps.fast.epochs=2"])
    assert tree["sweeps"] == {"fast": {"lr": 0.01, "epochs": 2}}
    assert compose_params({"sweeps": {}})["sweeps"] == {}


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("train:\n  threshold: 0.5\n", [], "{profile}: unknown key 'train.threshold'"),
        (
            "inference:\n  threshold: 1.5\n",
            [],
            "{profile}: key 'inference.threshold': Input should be less than or equal to 1 (got 1.5)",
        ),
        ("sweeps:\n  fast: {lrr: 0.1}\n", [], "{profile}: unknown key 'sweeps.fast.lrr'"),
        ("[1, 2]\n", [], "{profile}: expected a mapping of params at the top level"),
        ("epochs: 3\n", ["train.tresh=0.5"], "--set train.tresh=0.5: unknown key 'train.tresh'"),
        ("epochs: 3\n", ["epochs"], "--set epochs: expected key=value, e.g. --set lr=0.0005"),
        (
            "epochs: 3\n",
            ["split.train=0.5"],
            "--set split.train=0.5: key 'split': split.train + split.val + split.test must be 1, got 0.78",
        ),
    ],
)
def test_composition_errors_name_the_profile_or_set_item_and_the_key(tmp_path, text, overrides, message):
    profile = tmp_path / "profile.yaml"
    profile.write_text(text)
    with pytest.raises(ConfigError) as info:
        compose_params(profile, overrides=overrides)
    assert str(info.value) == message.format(profile=profile)


def test_cli_writes_the_composed_params_file(tmp_path):
    from typer.testing import CliRunner

    from glioseg.cli import app

    out = tmp_path / "params.yaml"
    args = ["params", str(REPO / "profiles/cpu-real.yaml"), "--set", "data.source=/data/kaggle_3m", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    written = yaml.safe_load(out.read_text())
    assert written == compose_params(REPO / "profiles/cpu-real.yaml", overrides=["data.source=/data/kaggle_3m"])
    assert out.read_text().startswith("# Written by `glioseg params ")
    assert [path.name for path in tmp_path.iterdir()] == ["params.yaml"]


def test_cli_reports_a_bad_profile_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from glioseg.cli import app

    profile = tmp_path / "profile.yaml"
    profile.write_text("train:\n  device: cuda\n")
    result = CliRunner().invoke(app, ["params", str(profile), "--out", str(tmp_path / "params.yaml")])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {profile}: unknown key 'train.device'"
    assert not (tmp_path / "params.yaml").exists()
