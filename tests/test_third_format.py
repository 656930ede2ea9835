"""The data-format seam holds: a third format, defined in one test file and registered with one entry, goes
through download -> evaluate, predict and the viewer; and nothing outside glioseg.formats asks which dataset
it has."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from glioseg import paths
from glioseg.app import logic
from glioseg.config.schema import parse_params
from glioseg.errors import ConfigError
from glioseg.formats import FORMATS
from glioseg.inference.scans import predict
from glioseg.io import read_json
from glioseg.pipeline.runner import stage_function
from tests.conftest import TINY_PARAMS
from tests.decathlon_format import IMAGE, LABEL, PREDICTION, Decathlon, write_cases

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "glioseg"
STAGES = ("download", "clean", "labels", "split", "cache", "augment", "train", "evaluate")
# A test of the dataset's name or of a format's files: the formats package alone may hold one.
FORMAT_TEST = re.compile(r"""dataset\s*(==|!=|\bin\b)|==\s*["'](lgg|brats)["']|is_case_folder|\.nii|_mask\.tif""")


def test_nothing_outside_the_formats_package_branches_on_the_dataset():
    found = [
        f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if "formats" not in path.relative_to(PACKAGE).parts
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if FORMAT_TEST.search(line) and not line.lstrip().startswith(("#", '"""', "``", "a ``"))
    ]
    assert found == []


def test_an_unregistered_format_is_a_one_line_error_naming_the_key():
    with pytest.raises(ConfigError, match="key 'dataset': unknown data format \\(known: lgg, brats\\)"):
        parse_params({"dataset": "decathlon"})


@pytest.fixture
def decathlon(tmp_path, monkeypatch):
    """The test format registered, a source of 12 cases, and the pipeline run on it up to evaluate."""
    monkeypatch.setitem(FORMATS, "decathlon", Decathlon())
    source = tmp_path / "source"
    write_cases(source, 12)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    params = parse_params(
        {**TINY_PARAMS, "dataset": "decathlon", "epochs": 4, "lr": 0.01, "data": {"source": str(source)}}
    )
    for stage in STAGES:
        stage_function(stage)(params)
    return params, source


def test_a_third_format_runs_from_download_to_the_viewer(decathlon, tmp_path):
    params, source = decathlon
    assert (params.model.in_channels, params.model.classes, params.regions()) == (1, 1, {"tumour": (1,)})
    manifest = pd.read_csv(paths.MANIFEST)
    assert manifest["patient"].nunique() == 12 and len(manifest) == 12 * 6
    assert sorted(p.name for p in (paths.raw_cases("decathlon") / "case_00").iterdir()) == [IMAGE, LABEL]
    test = read_json(paths.TEST_METRICS)["test"]
    assert test["patients"] >= 2 and test["dice_patient_mean"] > 0.6  # it learned the bright ball

    out = tmp_path / "predicted"
    table = predict(source, paths.MODEL, out, device="cpu")
    assert sorted(table["case"].unique()) == sorted(p.name for p in source.iterdir())
    written = nib.load(out / "case_01" / PREDICTION)
    original = nib.load(source / "case_01" / IMAGE)
    assert written.shape == original.shape and np.allclose(written.affine, original.affine)
    assert set(np.unique(np.asarray(written.dataobj)).tolist()) <= {0, 1}
    assert sorted(p.name for p in (source / "case_01").iterdir()) == [IMAGE, LABEL]  # inputs untouched

    assert logic.list_cases(source) == sorted(p.name for p in source.iterdir())
    loaded = logic.load(str(paths.MODEL))
    assert logic.default_data_folder(loaded) == paths.raw_cases("decathlon")
    result = logic.case_result(loaded, logic.load_case(source / "case_01"), "cpu")
    assert result.has_truth and len(result.slices) == 6
    data, file_name, _ = logic.prediction_download(result)
    assert file_name == PREDICTION and data == (out / "case_01" / PREDICTION).read_bytes()
