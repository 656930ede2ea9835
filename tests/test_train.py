import numpy as np
import pytest
import torch

from glioseg.config import parse_params
from glioseg.model import load_model, save_checkpoint
from glioseg.train import Trainer
from tests.conftest import TINY_PARAMS


def fit(params, data, directory, on_epoch=None):
    train, val, pipelines = data
    return Trainer(params, train, val, pipelines, fingerprint="f").fit(directory, on_epoch)


def test_training_is_deterministic_on_cpu(tiny_params, tiny_data, tmp_path):
    first = fit(tiny_params, tiny_data, tmp_path / "a")
    second = fit(tiny_params, tiny_data, tmp_path / "b")
    columns = [c for c in first.history if c != "seconds"]
    assert first.history[columns].equals(second.history[columns])
    for key, value in first.best["state_dict"].items():
        assert torch.equal(value, second.best["state_dict"][key]), key


def test_history_has_train_and_val_curves(tiny_params, tiny_data, tmp_path):
    outcome = fit(tiny_params, tiny_data, tmp_path)
    assert list(outcome.history["epoch"]) == [1, 2, 3]
    for column in ("train_loss", "val_loss", "train_dice", "val_dice", "train_iou", "val_iou"):
        assert outcome.history[column].notna().all(), column
    assert outcome.history["train_loss"].iloc[-1] < outcome.history["train_loss"].iloc[0]
    assert outcome.best_epoch == int(outcome.history["val_dice"].idxmax()) + 1
    assert (tmp_path / "last.pt").is_file()


def test_interrupted_run_resumes_to_the_same_weights(tiny_params, tiny_data, tmp_path):
    reference = fit(tiny_params, tiny_data, tmp_path / "reference")

    def interrupt(epoch, row, model):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(tiny_params, tiny_data, tmp_path / "resumed", interrupt)
    resumed = fit(tiny_params, tiny_data, tmp_path / "resumed")
    assert resumed.resumed_from == 2
    assert list(resumed.history["epoch"]) == [1, 2, 3]
    np.testing.assert_allclose(resumed.history["train_loss"], reference.history["train_loss"], rtol=1e-6)
    for key, value in reference.best["state_dict"].items():
        assert torch.equal(value, resumed.best["state_dict"][key]), key


def test_checkpoint_of_other_params_is_not_resumed(tiny_data, tmp_path):
    train, val, pipelines = tiny_data
    params = parse_params({**TINY_PARAMS, "epochs": 1})
    Trainer(params, train, val, pipelines, fingerprint="old").fit(tmp_path)
    outcome = Trainer(params, train, val, pipelines, fingerprint="new").fit(tmp_path)
    assert outcome.resumed_from == 0


@pytest.mark.parametrize("loss", ["wbce", "dice", "combined"])
def test_every_loss_trains(loss, tiny_data, tmp_path):
    params = parse_params({**TINY_PARAMS, "loss": loss, "epochs": 1})
    outcome = fit(params, tiny_data, tmp_path)
    assert np.isfinite(outcome.history["train_loss"]).all()


def test_best_model_round_trips_with_weights_only(tiny_params, tiny_data, tmp_path):
    outcome = fit(tiny_params, tiny_data, tmp_path)
    save_checkpoint(tmp_path / "model.pt", outcome.best)
    loaded = load_model(tmp_path / "model.pt")
    assert loaded.threshold == pytest.approx(0.3)
    assert set(loaded.pipelines) == {"preprocess", "train", "eval"}
    x = torch.zeros(1, 3, 32, 32)
    assert loaded.model(x).shape == (1, 1, 32, 32)
