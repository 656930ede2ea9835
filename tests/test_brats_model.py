"""BraTS through the same stages, trainer, evaluation and predict as LGG, on tiny phantoms."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from glioseg import paths
from glioseg.config.schema import parse_params
from glioseg.data.cache import load_cache
from glioseg.evaluation.evaluate import evaluate
from glioseg.inference.scans import predict
from glioseg.model.checkpoint import load_model, save_checkpoint
from glioseg.pipeline.runner import DATA_STAGES, stage_function
from glioseg.pipeline.stages.train import load_pipelines
from glioseg.training.loop import Trainer

PARAMS = {
    "seed": 1,
    "dataset": "brats",
    "lr": 0.01,
    "epochs": 1,
    "batch_size": 4,
    "data": {"synthetic": {"patients": 4, "slices": 8, "size": 32, "seed": 2}},
    "split": {"train": 0.5, "val": 0.25, "test": 0.25},
    "augment": {"image_size": 32},
    "model": {"encoder": "resnet18", "encoder_depth": 3, "decoder_channels": [16, 8, 8]},
    "run": {"device": "cpu", "threads": 1},
}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Data stages on phantoms, then one epoch of training: (project folder, params, model path)."""
    root = tmp_path_factory.mktemp("brats")
    params = parse_params(PARAMS)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        for stage in DATA_STAGES:
            stage_function(stage)(params)
        arrays = load_cache(paths.CACHE)
        pipelines = load_pipelines()
        outcome = Trainer(params, arrays.select("train"), arrays.select("val"), pipelines, "f").fit(root / "ckpt")
        save_checkpoint(root / "model.pt", outcome.best)
    return root, params, root / "model.pt"


def test_cache_holds_two_channels_and_four_classes(pipeline):
    root, _, _ = pipeline
    arrays = load_cache(root / paths.CACHE)
    assert arrays.images.shape[1:] == (32, 32, 2)
    assert set(np.unique(arrays.masks)) == {0, 1, 2, 3}
    split = pd.read_csv(root / paths.SPLIT)
    assert split.groupby("patient")["subset"].nunique().max() == 1


def test_labels_count_classes_and_keep_the_diagnosis_meaning(pipeline):
    root, _, _ = pipeline
    labels = pd.read_csv(root / paths.LABELS)
    assert len(labels) == 4 * 8
    class_sum = labels[["necrotic_core_pixels", "oedema_pixels", "enhancing_pixels"]].sum(axis=1)
    assert (class_sum == labels["tumour_pixels"]).all()
    assert ((labels["tumour_pixels"] > 0).astype(int) == labels["diagnosis"]).all()


def test_model_is_softmax_with_the_data_card(pipeline):
    _, _, model_path = pipeline
    loaded = load_model(model_path)
    assert (loaded.params.in_channels, loaded.classes) == (2, 4)
    assert loaded.dataset == "brats" and list(loaded.regions) == ["whole_tumour", "tumour_core", "enhancing_tumour"]
    assert loaded.format_settings.label_map == {0: 0, 1: 1, 2: 2, 4: 3}


def test_evaluation_reports_every_region_and_the_seed_metrics(pipeline):
    root, _, model_path = pipeline
    test = load_cache(root / paths.CACHE).select("test")
    result = evaluate(load_model(model_path), test, "cpu")
    summary = result.summary
    assert set(summary["regions"]) == {"whole_tumour", "tumour_core", "enhancing_tumour"}
    regional = [summary["regions"][r]["dice_patient_mean"] for r in summary["regions"]]
    assert summary["dice_patient_mean"] == pytest.approx(np.mean(regional))
    assert 0.0 <= summary["mean_iou_classes"] <= 1.0 and summary["onehot_specificity"] > 0.5
    assert len(result.per_slice) == 3 * len(test)
    assert set(result.per_patient["region"]) == set(summary["regions"])


def test_predict_writes_nifti_aligned_with_the_input_and_equal_to_evaluate(pipeline, tmp_path):
    root, _, model_path = pipeline
    arrays = load_cache(root / paths.CACHE)
    case = str(arrays.patient[0])
    source = root / paths.raw_cases("brats") / case
    table = predict(source, model_path, tmp_path / "out", "cpu")
    written = nib.load(tmp_path / "out" / case / f"{case}_pred.nii.gz")
    reference = nib.load(source / f"{case}_flair.nii.gz")
    assert written.shape == reference.shape
    np.testing.assert_allclose(written.affine, reference.affine)
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2, 4}
    assert len(table) == 8 and (tmp_path / "out" / "cases.csv").is_file()
    cases = pd.read_csv(tmp_path / "out" / "cases.csv")
    assert {"tumour_ml", "oedema_ml", "enhancing_ml"} <= set(cases.columns)
    # Image size equals the input size here, so predict's labels are evaluate's, slice for slice.
    rows = np.flatnonzero(arrays.patient == case)
    expected = evaluate(load_model(model_path), arrays.take(rows), "cpu").predictions
    from glioseg.formats.nifti import volume_to_slices

    canonical = volume_to_slices(np.asarray(nib.as_closest_canonical(written).dataobj))
    classes = np.select([canonical == 4, canonical == 2, canonical == 1], [3, 2, 1], 0)
    np.testing.assert_array_equal(classes[arrays.slice[rows]], expected)


def test_lgg_input_to_a_brats_model_is_a_one_line_error(pipeline, tmp_path):
    from glioseg.errors import DataError

    _, _, model_path = pipeline
    folder = tmp_path / "TCGA_CS_0000_20000101"
    folder.mkdir()
    (folder / "TCGA_CS_0000_20000101_1.tif").write_bytes(b"")
    with pytest.raises(DataError, match="trained on BraTS and reads NIfTI cases"):
        predict(folder, model_path, tmp_path / "out", "cpu")
