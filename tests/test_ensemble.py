"""Fold ensembles: a model set averages its members' probabilities, each member normalising the batch its own way."""

import dataclasses
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from glioseg.config.sections import AugmentParams, InferenceParams, ModelParams
from glioseg.data.batch_augment import eval_normaliser
from glioseg.data.transforms import build_pipelines, pipelines_to_dict
from glioseg.errors import DataError
from glioseg.formats.base import DataCard
from glioseg.inference.predictor import MemberAveraged, Predictor
from glioseg.model.checkpoint import OLDEST_CARD as LGG_CARD
from glioseg.model.checkpoint import LoadedModel, ModelSet, describe_models


class ConstantProbability(torch.nn.Module):
    """Logits whose sigmoid is ``probability`` everywhere, whatever the input."""

    def __init__(self, probability: float):
        super().__init__()
        self.logit = float(np.log(probability / (1 - probability)))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.full((len(batch), 1, *batch.shape[2:]), self.logit)


class MeanPixel(torch.nn.Module):
    """Logit = the normalised input's first channel: shows which normalisation a member got."""

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return batch[:, :1].float()


def pipelines(mean: float = 0.0, std: float = 1.0) -> dict:
    flat = np.full((2, 8, 8, 3), 0, np.uint8)
    built = pipelines_to_dict(build_pipelines(AugmentParams(image_size=32), flat))
    built["eval"]["transform"]["transforms"][-1].update(mean=[mean] * 3, std=[std] * 3)
    return built


def member(
    model: torch.nn.Module, threshold: float = 0.5, card: DataCard = LGG_CARD, size: int = 32, mean: float = 0.0
) -> LoadedModel:
    built = pipelines(mean)
    if size != 32:
        built = pipelines_to_dict(build_pipelines(AugmentParams(image_size=size), np.zeros((2, 8, 8, 3), np.uint8)))
    return LoadedModel(
        model,
        ModelParams(in_channels=3, classes=1),
        built,
        InferenceParams(threshold=threshold),
        {"mlflow_run_id": f"run-{id(model)}"},
        card,
    )


def test_an_ensemble_of_two_known_models_averages_their_probabilities():
    models = ModelSet((member(ConstantProbability(0.2)), member(ConstantProbability(0.7))), ("a.pt", "b.pt"))
    images = np.zeros((3, 32, 32, 3), np.uint8)
    network = Predictor(models, "cpu").network
    assert isinstance(network, MemberAveraged)
    logits = network(torch.from_numpy(images).permute(0, 3, 1, 2))
    torch.testing.assert_close(torch.sigmoid(logits), torch.full((3, 1, 32, 32), 0.45))
    # 0.45: below the first member's threshold 0.5 (the set's default), above 0.4 when that is asked
    assert Predictor(models, "cpu").labels(images).sum() == 0
    assert Predictor(models, "cpu", InferenceParams(threshold=0.4)).labels(images).sum() == 3 * 32 * 32
    # each alone: 0.2 -> nothing, 0.7 -> everything
    assert Predictor(models.members[1], "cpu").labels(images).sum() == 3 * 32 * 32


def test_each_member_normalises_with_its_own_statistics():
    """Folds compute their normalisation on their own training patients: each member applies its own."""
    first, second = member(MeanPixel(), mean=0.0), member(MeanPixel(), mean=0.5)
    network = Predictor(ModelSet((first, second), ("a", "b")), "cpu").network
    batch = torch.full((1, 3, 4, 4), 255, dtype=torch.uint8)
    expected = (torch.sigmoid(torch.tensor(1.0)) + torch.sigmoid(torch.tensor(0.5))) / 2
    torch.testing.assert_close(torch.sigmoid(network(batch))[0, 0, 0, 0], expected)
    assert eval_normaliser(second.pipelines).mean == (0.5, 0.5, 0.5)


def test_a_set_with_tta_flip_averages_each_member():
    models = ModelSet((member(ConstantProbability(0.2)), member(ConstantProbability(0.6))), ("a", "b"))
    predictor = Predictor(models, "cpu", InferenceParams(tta=True, threshold=0.39))
    assert predictor.labels(np.zeros((1, 32, 32, 3), np.uint8)).sum() == 32 * 32  # mean 0.4 > 0.39


def test_models_that_read_cases_differently_cannot_be_ensembled():
    with pytest.raises(DataError, match=r"b.pt: its preprocessing \(image size\) differs from a.pt's"):
        ModelSet((member(ConstantProbability(0.5)), member(ConstantProbability(0.5), size=64)), ("a.pt", "b.pt"))
    context_card = replace(LGG_CARD, context=1)
    with pytest.raises(DataError, match="b.pt: its data card"):
        ModelSet(
            (member(ConstantProbability(0.5)), member(ConstantProbability(0.5), card=context_card)), ("a.pt", "b.pt")
        )


def test_the_model_set_is_recorded():
    a, b = member(ConstantProbability(0.2)), member(ConstantProbability(0.7))
    models = ModelSet((a, b), ("a.pt", "runs:/x"))
    described = describe_models(models, models.names)
    assert [d["model"] for d in described] == ["a.pt", "runs:/x"]
    assert [d["mlflow_run_id"] for d in described] == [a.meta["mlflow_run_id"], b.meta["mlflow_run_id"]]
    assert "mlflow_run_id" not in models.meta  # an ensemble's results belong to no member's run
    assert [d["training_kernels"] for d in described] == ["unknown", "unknown"]  # model files from before the stamp
    a.meta |= {"training_precision": "bf16", "training_kernels": "avx512"}
    b.meta |= {"training_precision": "fp32", "training_kernels": "avx2"}
    assert [d["training_kernels"] for d in describe_models(models, models.names)] == ["avx512", "avx2"]
    assert models.meta["training_precision"] == "bf16,fp32" and models.meta["training_kernels"] == "avx2,avx512"


def test_evaluate_command_scores_each_model_and_their_ensemble(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from glioseg.cli import app
    from glioseg.data.cache import save_cache
    from tests.conftest import square_slices, train_tiny_model

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    first = train_tiny_model(tmp_path / "a.pt", epochs=1)
    second = train_tiny_model(tmp_path / "b.pt", epochs=2)
    arrays = dataclasses.replace(square_slices(9, 32, seed=5), subset=np.array(["test"] * 9))
    save_cache(arrays, tmp_path / "data" / "cache" / "slices.npz")
    (tmp_path / "params.yaml").write_text("run: {device: cpu}\n")
    out = CliRunner().invoke(
        app, ["evaluate", "--model", str(first), "--model", str(second), "--out", str(tmp_path / "compared.json")]
    )
    assert out.exit_code == 0, out.output
    assert "ensemble of 2" in out.output and "dice_patient_mean 95% CI" in out.output
    compared = json.loads((tmp_path / "compared.json").read_text())
    assert list(compared) == [str(first), str(second), "ensemble of 2"]
    assert compared["ensemble of 2"]["protocol"]["models"] == [str(first), str(second)]
    assert compared[str(first)]["protocol"]["models"] == [str(first)]
    assert all(summary["patients"] == 3 for summary in compared.values())
    missing = CliRunner().invoke(app, ["evaluate", "--model", str(first), "--subset", "val"])
    assert missing.exit_code == 2 and "the val subset is empty" in missing.output
    (tmp_path / "params.yaml").write_text("run: {device: cpu}\ndata: {window: [1, 99]}\n")
    windowed = CliRunner().invoke(app, ["evaluate", "--model", str(first)])
    assert windowed.exit_code == 2
    assert (
        f"{first}: trained with data.window null, but this pipeline's cache (data/cache) was built with "
        "data.window [1.0, 99.0]"
    ) in windowed.output
