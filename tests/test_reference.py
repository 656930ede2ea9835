"""Each param is described once, in the schema: docs/reference/params.md and params.yaml's comments are
written from those descriptions, and the command line takes its inference help and device choices from
the same places."""

import re
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from glioseg import paths
from glioseg.cli import app
from glioseg.config import reference
from glioseg.config.compose import compose_params, params_yaml, schema_defaults
from glioseg.config.schema import Params
from glioseg.config.sections import InferenceParams, Postprocess, RunParams
from glioseg.device import DEVICES

REPO = Path(__file__).resolve().parents[1]
STALE = "is stale: run `python -m glioseg.config.reference` and commit what it writes"
FIELDS = list(reference.fields())


@pytest.mark.parametrize("path", list(reference.outputs()), ids=str)
def test_the_generated_files_are_up_to_date(path):
    assert (REPO / path).read_text() == reference.outputs()[path], f"{path} {STALE}"


def test_params_yaml_is_what_glioseg_params_writes():
    result = CliRunner().invoke(app, ["params"])
    assert result.exit_code == 0, result.output
    assert result.output == (REPO / "params.yaml").read_text()


def test_the_generator_writes_both_files_and_then_nothing(tmp_path):
    assert set(reference.main(tmp_path)) == set(reference.outputs())
    assert yaml.safe_load((tmp_path / "params.yaml").read_text()) == schema_defaults()
    assert reference.main(tmp_path) == []


@pytest.mark.parametrize(("key", "field"), FIELDS, ids=[key for key, _ in FIELDS])
def test_every_field_has_a_description(key, field):
    assert field.description and field.description.strip(), f"{key}: no Field(description=...) in the schema"


CHOICE_FIELDS = [(key, field) for key, field in FIELDS if reference.choices(field.annotation)]


@pytest.mark.parametrize(("key", "field"), CHOICE_FIELDS, ids=[key for key, _ in CHOICE_FIELDS])
def test_a_choice_fields_description_names_every_choice(key, field):
    """params.yaml shows a key's description, not its type: it must say what values the key takes."""
    for choice in reference.choices(field.annotation):
        assert re.search(rf"(?<![\w-]){re.escape(choice)}(?![\w-])", field.description), f"{key}: {choice!r} unnamed"


def test_every_key_of_params_yaml_is_commented_with_its_description():
    text = (REPO / "params.yaml").read_text()
    for key, field in FIELDS:
        if ".NAME." in key:
            continue  # sweep entries are one-line mappings; their fields are described in the reference
        first_words = " ".join(field.description.split()[:4])
        assert first_words in " ".join(line.partition("# ")[2] for line in text.splitlines()), key


def test_the_reference_lists_every_key_once():
    text = (REPO / "docs/reference/params.md").read_text()
    rows = re.findall(r"^\| `([^`]+)` \|", text, flags=re.MULTILINE)
    sections = {key for key, field in FIELDS if reference.section_model(field) or reference.entry_model(field)}
    assert rows == [key for key, _ in FIELDS if key not in sections]


def test_written_params_read_back_the_same_with_any_profile():
    tree = compose_params(REPO / "profiles/cpu-real.yaml", overrides=["sweeps={}", "data.source='/data/a: b #c'"])
    assert yaml.safe_load(params_yaml(tree, "glioseg params x")) == tree


def test_choices_reads_the_values_of_a_literal_field():
    assert reference.choices(RunParams.model_fields["device"].annotation) == DEVICES


def _options(command: str) -> dict:
    group = typer.main.get_command(app)
    return {param.name: param for param in group.commands[command].params}


def test_predict_takes_its_inference_help_and_device_choices_from_their_sources():
    options = _options("predict")
    for name in InferenceParams.model_fields:
        assert options[name].help.startswith(InferenceParams.model_fields[name].description)
    assert options["postprocess"].metavar == "[" + "|".join(Postprocess.__args__) + "]"
    for command in ("predict", "serve"):
        device = _options(command)["device"]
        assert all(choice in device.help for choice in DEVICES) and device.default == "auto"


def test_the_default_model_is_the_train_stages_model_file():
    assert _options("predict")["model"].default == [paths.MODEL.as_posix()] == ["models/model.pt"]
    assert _options("serve")["model"].default == paths.MODEL.as_posix()


def test_params_docstring_heads_both_files():
    first = Params.__doc__.strip().splitlines()[0]
    assert first in (REPO / "docs/reference/params.md").read_text()
    assert f"# {first}" in (REPO / "params.yaml").read_text()
