"""2.5-D context: stacks of neighbouring slices, built in the cache stage and by the predictor alike."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from glioseg.config.schema import parse_params
from glioseg.config.sections import InferenceParams, ModelParams
from glioseg.data.build import build_cache
from glioseg.data.context import centre_slice, stack_context
from glioseg.data.transforms import build_pipelines, pipelines_to_dict
from glioseg.errors import DataError
from glioseg.inference.predictor import Predictor
from glioseg.model.checkpoint import OLDEST_CARD as LGG_CARD
from glioseg.model.checkpoint import LoadedModel
from tests.conftest import write_slice


def volume(depth: int, channels: int = 3, size: int = 4) -> np.ndarray:
    """Slice z, channel c holds 10*z + c everywhere."""
    values = 10 * np.arange(depth)[:, None] + np.arange(channels)[None, :]
    return np.broadcast_to(values[:, None, None, :], (depth, size, size, channels)).astype(np.uint8)


def slice_of_block(stack: np.ndarray, block: int, channels: int = 3) -> int:
    """Which slice channel block ``block`` of a stacked pixel came from."""
    return int(stack[0, 0, block * channels]) // 10


def test_stacks_hold_the_neighbouring_slices_with_the_ends_repeated():
    stacked = stack_context(volume(4), 1)
    assert stacked.shape == (4, 4, 4, 9)
    assert [[slice_of_block(s, b) for b in range(3)] for s in stacked] == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]
    assert stacked[1, 0, 0].tolist() == [0, 1, 2, 10, 11, 12, 20, 21, 22]  # each neighbour's channels together
    wide = stack_context(volume(4), 2)
    assert [slice_of_block(wide[0], b) for b in range(5)] == [0, 0, 0, 1, 2]
    assert [slice_of_block(wide[3], b) for b in range(5)] == [1, 2, 3, 3, 3]
    np.testing.assert_array_equal(centre_slice(wide, 2), volume(4))
    np.testing.assert_array_equal(stack_context(volume(4), 0), volume(4))  # no context: the slices themselves


def test_the_cache_stacks_each_kept_slice_from_all_its_patients_slices(tmp_path):
    """Slice 1 of P1 is removed (dark) but still the neighbour of slice 2; P2's slices never mix with P1's."""
    rows = [write_slice(tmp_path, "P1", n, 10 * n) for n in (1, 2, 3)] + [
        write_slice(tmp_path, "P2", n, 100 + 10 * n) for n in (1, 2)
    ]
    labels = pd.DataFrame(rows).assign(kept=[0, 1, 1, 1, 1], diagnosis=0)
    split = labels[labels["kept"] == 1][["patient", "slice", "diagnosis"]].assign(subset="train")
    params = parse_params({"augment": {"image_size": 32}, "data": {"context": 1}})
    arrays = build_cache(labels, split, params)
    assert arrays.images.shape == (4, 32, 32, 9) and params.model.in_channels == 9
    blocks = [[int(arrays.images[i, 0, 0, 3 * b]) for b in range(3)] for i in range(4)]
    assert blocks == [[10, 20, 30], [20, 30, 30], [110, 110, 120], [110, 120, 120]]
    assert list(zip(arrays.patient, arrays.slice)) == [("P1", 2), ("P1", 3), ("P2", 1), ("P2", 2)]
    flat = build_cache(labels, split, parse_params({"augment": {"image_size": 32}}))
    np.testing.assert_array_equal(centre_slice(arrays.images, 1), flat.images)


class InputRecorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.seen: list[tuple[int, ...]] = []

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(batch.shape))
        return torch.zeros(len(batch), 1, *batch.shape[2:])


def context_model(model: torch.nn.Module) -> LoadedModel:
    pipelines = pipelines_to_dict(
        build_pipelines(parse_params({"augment": {"image_size": 32}}).augment, np.zeros((2, 32, 32, 9), np.uint8))
    )
    return LoadedModel(
        model, ModelParams(in_channels=9, classes=1), pipelines, InferenceParams(), {}, replace(LGG_CARD, context=1)
    )


def test_the_predictor_stacks_a_case_and_refuses_a_lone_slice():
    recorder = InputRecorder()
    predictor = Predictor(context_model(recorder), "cpu")
    assert predictor.slice_channels == 3
    originals = list(volume(3, size=64))
    assert predictor.predict_case(originals).shape == (3, 32, 32)
    assert recorder.seen == [(3, 9, 32, 32)]
    np.testing.assert_array_equal(
        predictor.preprocess(originals), stack_context(predictor.preprocess(originals)[..., 3:6], 1)
    )
    with pytest.raises(
        DataError,
        match=r"scan.tif: a single slice, but the model reads each slice with the 1 "
        r"slice\(s\) above and below it \(data.context\)",
    ):
        predictor.predict_case(originals[:1], "scan.tif")
