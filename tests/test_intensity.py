"""Per-patient intensity windows (data.window): one function for the cache stage and the predictor."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from glioseg.config.schema import parse_params
from glioseg.config.sections import InferenceParams, ModelParams
from glioseg.data.build import build_cache
from glioseg.data.transforms import build_pipelines, pipelines_to_dict
from glioseg.errors import DataError
from glioseg.formats.intensity import window_case
from glioseg.inference.predictor import Predictor
from glioseg.model.checkpoint import OLDEST_CARD as LGG_CARD
from glioseg.model.checkpoint import LoadedModel
from tests.conftest import write_slice


def ramp_case() -> np.ndarray:
    """A (101, 2, 2, 3) case: slice z holds z in channel 0, z + 50 in channel 1 and 0 in channel 2."""
    values = np.arange(101)[:, None] * np.array([1, 1, 0])[None, :] + np.array([0, 50, 0])[None, :]
    return np.ascontiguousarray(np.broadcast_to(values[:, None, None, :], (101, 2, 2, 3))).astype(np.uint8)


def test_each_channel_is_windowed_between_its_own_percentiles():
    windowed = window_case(ramp_case(), (10, 90))
    assert windowed.dtype == np.uint8 and windowed.shape == (101, 2, 2, 3)
    # channel 0: 10 -> 0, 50 -> (40 / 80) * 255 rounded, 90 -> 255, clipped beyond
    assert windowed[[0, 10, 50, 90, 100], 0, 0, 0].tolist() == [0, 0, 128, 255, 255]
    np.testing.assert_array_equal(windowed[..., 1], windowed[..., 0])  # its own percentiles: 60..140
    assert not windowed[..., 2].any()  # a constant channel maps to 0, not NaN
    np.testing.assert_array_equal(window_case(ramp_case(), None), ramp_case())


def test_one_patient_at_two_intensity_scales_becomes_one_input():
    case = ramp_case()[:60]
    np.testing.assert_array_equal(window_case(case * 2, (1, 99)), window_case(case, (1, 99)))


def test_the_cache_windows_each_patient_over_all_its_slices(tmp_path):
    """P1's slice 1 is removed (dark) but counts in P1's percentiles; P2 is P1 at twice the brightness."""
    rows = [write_slice(tmp_path, "P1", n, 20 * n, two_tone=True) for n in (1, 2, 3)] + [
        write_slice(tmp_path, "P2", n, 40 * n, two_tone=True) for n in (1, 2, 3)
    ]
    labels = pd.DataFrame(rows).assign(kept=[0, 1, 1, 1, 1, 1], diagnosis=0)
    split = labels[labels["kept"] == 1][["patient", "slice", "diagnosis"]].assign(subset="train")
    params = parse_params({"augment": {"image_size": 32}, "data": {"window": [0, 100]}})
    arrays = build_cache(labels, split, params)
    assert list(zip(arrays.patient, arrays.slice)) == [("P1", 2), ("P1", 3), ("P2", 1), ("P2", 2), ("P2", 3)]
    as_stored = build_cache(
        labels,
        labels[["patient", "slice", "diagnosis"]].assign(subset="train"),
        parse_params({"augment": {"image_size": 32}}),
    )
    np.testing.assert_array_equal(arrays.images[:2], window_case(as_stored.images[:3], (0, 100))[1:])
    # P1's darkest pixel (10, in its removed slice) maps to 0 and its brightest (60) to 255
    assert arrays.images[0, 0, 0, 0] == round((20 - 10) / 50 * 255) and arrays.images[1, 31, 0, 0] == 255
    np.testing.assert_array_equal(arrays.images[3:], arrays.images[:2])  # one scale for both patients


class NoTumour(torch.nn.Module):
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.full((len(batch), 1, *batch.shape[2:]), -10.0)


def windowing_model() -> LoadedModel:
    pipelines = pipelines_to_dict(
        build_pipelines(parse_params({"augment": {"image_size": 32}}).augment, np.zeros((2, 32, 32, 3), np.uint8))
    )
    return LoadedModel(
        NoTumour(),
        ModelParams(in_channels=3, classes=1),
        pipelines,
        InferenceParams(),
        {},
        replace(LGG_CARD, context=0, window=(1.0, 99.0)),
    )


def test_the_predictor_windows_a_case_as_the_cache_does_and_refuses_a_lone_slice():
    predictor = Predictor(windowing_model(), "cpu")
    assert predictor.loaded.window == (1.0, 99.0)
    originals = [np.kron(image, np.ones((16, 16, 1), np.uint8)) for image in ramp_case()[:20]]  # 32x32 slices
    resized = np.stack([predictor.resize(image=image)["image"] for image in originals])
    np.testing.assert_array_equal(predictor.preprocess(originals), window_case(resized, (1.0, 99.0)))
    brighter = [image * 2 for image in originals]
    np.testing.assert_array_equal(predictor.preprocess(brighter), predictor.preprocess(originals))
    assert predictor.predict_case(originals).shape == (20, 32, 32) and not predictor.predict_case(originals).any()
    with pytest.raises(
        DataError,
        match=r"scan.tif: a single slice, but the model scales each slice by its "
        r"patient's intensity percentiles \[1.0, 99.0\] \(data.window\)",
    ):
        predictor.predict_case(originals[:1], "scan.tif")
