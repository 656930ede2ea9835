"""glioseg predict on TIFs the test writes, with a tiny trained model."""

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from glioseg.config.sections import InferenceParams
from glioseg.data.cache import SliceArrays
from glioseg.data.transforms import preprocess_pipeline
from glioseg.errors import ConfigError, DataError
from glioseg.evaluation.evaluate import evaluate, predict_masks
from glioseg.formats import FORMATS
from glioseg.inference.owned_output import STAGING_PREFIX, owned_files
from glioseg.inference.scans import inference_options, inference_settings, predict
from glioseg.model.checkpoint import load_model

find_scans = FORMATS["lgg"].find_scans


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    from tests.conftest import train_tiny_model

    return train_tiny_model(tmp_path_factory.mktemp("model") / "model.pt", epochs=2)


@pytest.fixture(scope="module")
def postprocessing_model_file(model_file, tmp_path_factory):
    """The same weights with flip TTA and largest-component post-processing switched on."""
    payload = torch.load(model_file, weights_only=True)
    path = tmp_path_factory.mktemp("model-pp") / "model.pt"
    torch.save(payload | {"inference": {**payload["inference"], "tta": True, "postprocess": "largest_component"}}, path)
    return path


@pytest.fixture
def patient_folder(tmp_path):
    rng = np.random.default_rng(4)
    folder = tmp_path / "kaggle_3m" / "TCGA_XX_0001_20000101"
    folder.mkdir(parents=True)
    for n in (1, 2, 10):
        image = rng.integers(0, 40, size=(128, 128, 3), dtype=np.uint8)
        image[40:80, 40:80] = 220
        tifffile.imwrite(folder / f"TCGA_XX_0001_20000101_{n}.tif", image, photometric="rgb")
        tifffile.imwrite(folder / f"TCGA_XX_0001_20000101_{n}_mask.tif", np.zeros((128, 128), np.uint8))
    return folder


def test_inputs_are_found_in_slice_order(patient_folder):
    [ref] = find_scans(patient_folder)
    assert [path.stem for path in ref.files] == [f"TCGA_XX_0001_20000101_{n}" for n in (1, 2, 10)]
    assert find_scans(patient_folder.parent)[0].name == "TCGA_XX_0001_20000101"
    assert len(find_scans(patient_folder / "TCGA_XX_0001_20000101_2.tif")[0].files) == 1


@pytest.mark.parametrize("model", ["model_file", "postprocessing_model_file"])
def test_predict_writes_masks_overlays_and_areas_matching_evaluation(model, patient_folder, tmp_path, request):
    model_file = request.getfixturevalue(model)
    out = tmp_path / "out"
    table = predict(patient_folder, model_file, out, device="cpu")
    case = out / "TCGA_XX_0001_20000101"
    for n in (1, 2, 10):
        mask = tifffile.imread(case / f"TCGA_XX_0001_20000101_{n}_mask.tif")
        assert mask.shape == (128, 128) and set(np.unique(mask)) <= {0, 255}
        assert (case / f"TCGA_XX_0001_20000101_{n}_overlay.png").is_file()
    areas = pd.read_csv(out / "areas.csv")
    assert areas["slice"].tolist() == [f"TCGA_XX_0001_20000101_{n}" for n in (1, 2, 10)]
    assert pd.read_csv(out / "cases.csv")["slices"].tolist() == [3]

    # the same slices through the evaluation path (cache-style resize, model-size masks)
    loaded = load_model(model_file)
    settings = (loaded.inference.tta, loaded.inference.postprocess)
    assert settings == ((True, "largest_component") if model != "model_file" else (False, "none"))
    expected = predict_masks(loaded, cached_case(patient_folder), "cpu")
    for row, n in enumerate((1, 2, 10)):
        written = tifffile.imread(case / f"TCGA_XX_0001_20000101_{n}_mask.tif") > 0
        np.testing.assert_array_equal(written[::4, ::4], expected[row])
    assert table["model_pixels"].tolist() == [int(m.sum()) for m in expected]


def cached_case(patient_folder) -> SliceArrays:
    """The patient's slices as the cache stage stores them (model size), for the evaluation path."""
    resize = preprocess_pipeline(32)
    images = np.stack(
        [resize(image=tifffile.imread(patient_folder / f"TCGA_XX_0001_20000101_{n}.tif"))["image"] for n in (1, 2, 10)]
    )
    return SliceArrays(
        images,
        np.zeros((3, 32, 32), np.uint8),
        np.zeros((3, 32, 32), np.float16),
        np.array(["p"] * 3),
        np.array([1, 2, 10]),
        np.array(["test"] * 3),
    )


def test_overridden_inference_settings_give_what_evaluate_gives_with_them(model_file, patient_folder, tmp_path):
    """predict's overrides (TTA, post-processing, a threshold) = evaluate's labels at model size, same settings."""
    loaded = load_model(model_file)
    assert loaded.inference == InferenceParams()  # the file's: no TTA, no post-processing
    arrays = cached_case(patient_folder)
    for threshold in (0.05, 0.3):
        settings = InferenceParams(threshold=threshold, tta=True, postprocess="largest_component")
        table = predict(patient_folder, model_file, tmp_path / f"out-{threshold}", "cpu", settings)
        expected = evaluate(loaded, arrays, "cpu", settings).predictions
        for row, n in enumerate((1, 2, 10)):
            written = (
                tifffile.imread(
                    tmp_path / f"out-{threshold}" / "TCGA_XX_0001_20000101" / f"TCGA_XX_0001_20000101_{n}_mask.tif"
                )
                > 0
            )
            np.testing.assert_array_equal(written[::4, ::4], expected[row])
        assert table["model_pixels"].tolist() == [int(m.sum()) for m in expected]
    # the settings differ from the file's: TTA and post-processing change the labels of this model
    assert not np.array_equal(expected, predict_masks(loaded, arrays, "cpu", InferenceParams(threshold=0.3)))


def test_options_replace_only_the_settings_they_give(postprocessing_model_file):
    loaded = load_model(postprocessing_model_file)
    assert inference_settings(loaded, None) == loaded.inference
    assert inference_settings(loaded, {"threshold": 0.6}) == InferenceParams(
        threshold=0.6, tta=True, postprocess="largest_component"
    )
    assert inference_settings(loaded, {"tta": False, "postprocess": None}).model_dump() == {
        "threshold": 0.3,
        "tta": False,
        "postprocess": "largest_component",
    }
    assert inference_settings(loaded, InferenceParams()) == InferenceParams()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"threshold": 1.5}, "--threshold: Input should be less than or equal to 1 (got 1.5)"),
        ({"postprocess": "largest"}, "--postprocess: Input should be 'none' or 'largest_component' (got 'largest')"),
        ({"smooth": True}, "--smooth: no such inference setting"),
    ],
)
def test_bad_inference_options_are_one_line_errors_naming_the_option(options, message):
    with pytest.raises(ConfigError) as raised:
        inference_options(**options)
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_predict_command_overrides_the_model_files_settings(model_file, patient_folder, tmp_path):
    from typer.testing import CliRunner

    from glioseg.cli import app

    base = ["predict", str(patient_folder), "--model", str(model_file), "--device", "cpu"]
    runner = CliRunner()
    result = runner.invoke(
        app,
        [*base, "--out", str(tmp_path / "cli"), "--threshold", "0.05", "--tta", "--postprocess", "largest_component"],
    )
    assert result.exit_code == 0, result.output
    settings = InferenceParams(threshold=0.05, tta=True, postprocess="largest_component")
    expected = predict_masks(load_model(model_file), cached_case(patient_folder), "cpu", settings)
    written = tifffile.imread(tmp_path / "cli" / "TCGA_XX_0001_20000101" / "TCGA_XX_0001_20000101_1_mask.tif") > 0
    np.testing.assert_array_equal(written[::4, ::4], expected[0])

    bad = runner.invoke(app, [*base, "--out", str(tmp_path / "bad"), "--threshold", "1.5"])
    assert bad.exit_code == 2 and "error: --threshold: Input should be less than or equal to 1" in bad.output
    bad = runner.invoke(app, [*base, "--out", str(tmp_path / "bad"), "--postprocess", "blur"])
    assert bad.exit_code == 2 and "error: --postprocess: Input should be 'none' or 'largest_component'" in bad.output
    bad = runner.invoke(app, [*base[:-1], "tpu", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "error: --device: expected one of auto, cpu, cuda (got 'tpu')" in bad.output
    if not torch.cuda.is_available():
        bad = runner.invoke(app, [*base[:-1], "cuda", "--out", str(tmp_path / "bad")])
        assert bad.exit_code == 2 and "error: --device: 'cuda' requested but no CUDA device" in bad.output
        assert "params.yaml" not in bad.output
    assert not (tmp_path / "bad").exists()


def test_bad_inputs_are_one_line_errors(model_file, patient_folder, tmp_path):
    with pytest.raises(DataError, match="input not found"):
        predict(tmp_path / "nope", model_file, tmp_path / "o1")
    grey = tmp_path / "grey" / "g_1.tif"
    grey.parent.mkdir()
    tifffile.imwrite(grey, np.zeros((64, 64, 3), np.uint8)[..., :1].squeeze(-1))
    with pytest.raises(DataError, match="g_1.tif"):
        predict(grey, model_file, tmp_path / "o2")
    with pytest.raises(DataError, match="model file not found"):
        predict(patient_folder, tmp_path / "missing.pt", tmp_path / "o3")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="holds files glioseg did not write"):
        predict(patient_folder, model_file, busy)
    assert (busy / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "o2").exists()


def test_nifti_input_to_an_lgg_model_is_a_one_line_error(model_file, tmp_path):
    from glioseg.formats.brats import BratsParams
    from glioseg.formats.synthetic.brats import generate_brats

    generate_brats(tmp_path / "cases", 1, 4, 32, seed=0, suffixes=dict(BratsParams().suffixes))
    with pytest.raises(DataError, match="trained on LGG and reads TIF slices, not NIfTI cases"):
        predict(tmp_path / "cases", model_file, tmp_path / "out", "cpu")
    assert not (tmp_path / "out").exists()


def test_predict_refuses_a_folder_of_other_files_and_with_overwrite_replaces_only_its_own(
    model_file, patient_folder, tmp_path
):
    out = tmp_path / "shared"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "areas.csv").write_text("the user's own table")
    with pytest.raises(DataError, match="holds files glioseg did not write"):
        predict(patient_folder, model_file, out)
    assert sorted(p.name for p in out.iterdir()) == ["areas.csv", "notes.txt"]
    assert (out / "areas.csv").read_text() == "the user's own table"

    predict(patient_folder, model_file, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert pd.read_csv(out / "areas.csv")["slice"].tolist() == [f"TCGA_XX_0001_20000101_{n}" for n in (1, 2, 10)]
    owned = owned_files(out)
    assert "areas.csv" in owned and "notes.txt" not in owned
    assert len([name for name in owned if name.endswith("_mask.tif")]) == 3

    # A second run into its own folder needs no --overwrite and removes nothing: its earlier files
    # that it does not write again stay, and so do the user's.
    one_slice = patient_folder / "TCGA_XX_0001_20000101_2.tif"
    predict(one_slice, model_file, out)
    masks = sorted(p.name for p in out.rglob("*_mask.tif"))
    assert masks == sorted(f"TCGA_XX_0001_20000101_{n}_mask.tif" for n in (1, 2, 10))
    assert set(owned_files(out)) == set(owned)
    assert (out / "notes.txt").read_text() == "mine"
    assert not [p for p in out.iterdir() if p.name.startswith(STAGING_PREFIX)]


def test_predict_into_the_working_directory_or_onto_a_file_is_one_line(
    model_file, patient_folder, tmp_path, monkeypatch
):
    work = tmp_path / "work"
    work.mkdir()
    (work / "scan_notes.md").write_text("keep")
    monkeypatch.chdir(work)
    with pytest.raises(DataError, match=r"--out \.: holds files glioseg did not write"):
        predict(patient_folder, model_file, Path("."))
    assert [p.name for p in work.iterdir()] == ["scan_notes.md"]
    with pytest.raises(DataError, match="scan_notes.md: is a file; give a folder"):
        predict(patient_folder, model_file, Path("scan_notes.md"))
    assert (work / "scan_notes.md").read_text() == "keep"


def test_a_failed_prediction_leaves_the_folder_as_it_was(model_file, patient_folder, tmp_path, monkeypatch):
    import glioseg.inference.scans as predict_module

    out = tmp_path / "out"
    predict(patient_folder, model_file, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def broken(*args, **kwargs):
        raise DataError("disk trouble")

    monkeypatch.setattr(predict_module, "case_totals", broken)
    with pytest.raises(DataError, match="disk trouble"):
        predict(patient_folder, model_file, out)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    with pytest.raises(DataError, match="disk trouble"):
        predict(patient_folder, model_file, tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_a_model_from_the_mlflow_store_leaves_no_copy_behind(model_file, patient_folder, tmp_path, monkeypatch):
    from glioseg.model.specs import CHECKPOINT_ARTIFACT, load_model_spec
    from glioseg.tracking import store as tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with tracking.start_run("train", {}, {}) as run:
        tracking.log_artifact(model_file, CHECKPOINT_ARTIFACT.rpartition("/")[0])
    tracking.client().create_registered_model("glioseg-test")
    tracking.client().create_model_version("glioseg-test", f"runs:/{run.info.run_id}/model", run.info.run_id)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    reference = load_model(model_file)
    for spec in (f"runs:/{run.info.run_id}", "models:/glioseg-test/1"):
        loaded = load_model_spec(spec)
        for key, value in reference.model.state_dict().items():
            assert torch.equal(loaded.model.state_dict()[key], value), (spec, key)
        assert list(scratch.iterdir()) == [], spec
    with pytest.raises(DataError, match="models:/glioseg-test/7: no such registered model version"):
        load_model_spec("models:/glioseg-test/7")


def test_an_ensemble_prediction_records_its_models_and_averages_them(
    model_file, postprocessing_model_file, patient_folder, tmp_path
):
    """Two files with the same weights: the averaged probabilities are the model's own, so the masks
    equal the single model's (with the first member's settings); prediction.json names both."""
    single = predict(patient_folder, model_file, tmp_path / "single")
    both = predict(patient_folder, [str(model_file), str(postprocessing_model_file)], tmp_path / "both")
    assert both["tumour_pixels"].tolist() == single["tumour_pixels"].tolist()
    record = json.loads((tmp_path / "both" / "prediction.json").read_text())
    assert [m["model"] for m in record["models"]] == [str(model_file), str(postprocessing_model_file)]
    assert record["inference"] == load_model(model_file).inference.model_dump(mode="json")
    comma = predict(patient_folder, f"{model_file},{postprocessing_model_file}", tmp_path / "comma")
    assert comma["tumour_pixels"].tolist() == single["tumour_pixels"].tolist()


def test_fold_models_are_found_in_the_mlflow_store(model_file, tmp_path, monkeypatch):
    from glioseg.model.checkpoint import ModelSet
    from glioseg.model.specs import CHECKPOINT_ARTIFACT, load_models, model_specs
    from glioseg.tracking import store as tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    ids = {}
    for fold in (1, 0):
        with tracking.start_run("train", {"split.folds": 2, "split.fold": fold, "split.by": "patient"}, {}) as run:
            tracking.log_artifact(model_file, CHECKPOINT_ARTIFACT.rpartition("/")[0])
            tracking.log_metrics({"test_dice_patient_mean": 0.5, "test_patients": 3})
            # evaluated with the inference settings its model carries, as cross-validation requires
            tracking.client().set_tag(run.info.run_id, tracking.INFERENCE_KEY, "k")
            tracking.client().set_tag(run.info.run_id, tracking.MODEL_INFERENCE_KEY, "k")
            ids[fold] = run.info.run_id
    assert model_specs("folds:2") == [f"runs:/{ids[0]}", f"runs:/{ids[1]}"]  # in fold order
    loaded = load_models("folds:2")
    assert isinstance(loaded, ModelSet) and len(loaded.members) == 2
    with pytest.raises(DataError, match="no complete 3-fold cross-validation|no evaluated run named 'train'"):
        model_specs("folds:3")
    with pytest.raises(ConfigError, match="folds:five: expected folds:<k>"):
        model_specs("folds:five")
