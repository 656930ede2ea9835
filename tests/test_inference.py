"""Flip test-time augmentation (the Predictor's): averaged probabilities, and the setting carried by the model file."""

import numpy as np
import pytest
import torch

from glioseg.config.schema import parse_params
from glioseg.config.sections import InferenceParams
from glioseg.evaluation.evaluate import predict_masks
from glioseg.inference.predictor import FLIPS, Predictor, flip_averaged_logits
from glioseg.model.checkpoint import load_model
from glioseg.model.network import labels_from_logits
from glioseg.training.loop import Trainer
from tests.conftest import TINY_PARAMS


class FixedLogits(torch.nn.Module):
    """Returns the same logits whatever the input: the flips act on the output only."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(batch), -1, -1, -1)


def test_flip_average_of_a_sigmoid_output():
    logits = torch.tensor([[[[4.0, -4.0], [0.0, -4.0]]]])
    averaged = flip_averaged_logits(FixedLogits(logits), torch.zeros(1, 3, 2, 2))
    probabilities = torch.sigmoid(logits)[0, 0]
    # Each pixel averages its own value and those of its mirror images: the four corners here.
    expected = probabilities.mean().expand(2, 2)
    torch.testing.assert_close(torch.sigmoid(averaged)[0, 0], expected)
    assert labels_from_logits(averaged, 0.5).sum() == 0  # mean probability 0.37 < 0.5
    assert labels_from_logits(logits, 0.5).sum() == 1


def test_flip_average_of_softmax_output_keeps_an_equivariant_prediction():
    """A prediction that each flip maps onto itself is unchanged by the averaging."""
    logits = torch.zeros(1, 3, 4, 4)
    logits[0, 2, 1:3, 1:3] = 5.0  # class 2 in the centre, symmetric under both flips
    labels = labels_from_logits(flip_averaged_logits(FixedLogits(logits), torch.zeros(1, 2, 4, 4)), 0.5)
    assert torch.equal(labels, labels_from_logits(logits, 0.5))
    assert labels.sum() == 4 * 2


@pytest.mark.parametrize("tta", [False, True])
def test_tta_setting_travels_with_the_model(tta, tiny_data, tmp_path):
    train, val, pipelines = tiny_data
    params = parse_params({**TINY_PARAMS, "epochs": 1, "inference": {"tta": tta}})
    outcome = Trainer(params, train, val, pipelines, fingerprint="f").fit(tmp_path / "ckpt")
    torch.save(outcome.best, tmp_path / "model.pt")
    loaded = load_model(tmp_path / "model.pt")
    assert loaded.inference.tta is tta
    predictions = predict_masks(loaded, val, device="cpu")
    assert predictions.shape == val.masks.shape and set(np.unique(predictions)) <= {0, 1}
    # the file's setting is the default; a setting given to the Predictor wins
    assert Predictor(loaded, "cpu").inference.tta is tta
    assert Predictor(loaded, "cpu", InferenceParams(tta=not tta)).inference.tta is (not tta)


class CountingModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 1)
        self.calls = 0

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.conv(batch)


def test_predictor_runs_the_flips_only_with_tta(tiny_data):
    """TTA costs one forward per flip; without it the model runs once per batch, as training's predict_labels."""
    from glioseg.config.sections import ModelParams
    from glioseg.model.checkpoint import OLDEST_CARD as LGG_CARD
    from glioseg.model.checkpoint import LoadedModel

    _, val, pipelines = tiny_data
    for tta, calls in ((False, 1), (True, len(FLIPS))):
        model = CountingModel()
        loaded = LoadedModel(
            model, ModelParams(in_channels=3, classes=1), pipelines, InferenceParams(tta=tta), {}, LGG_CARD
        )
        labels = Predictor(loaded, "cpu").labels(val.images)
        assert labels.shape == val.masks.shape and model.calls == calls
