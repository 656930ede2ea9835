"""Data-parallel training: two gloo processes train the same model as one with the same global batch.

The model uses group norm: batch norm cannot synchronise its statistics on the CPU
(SyncBatchNorm needs CUDA), so with it two ranks would normalise over half batches.
"""

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from glioseg.config.schema import parse_params
from glioseg.data.transforms import build_pipelines, pipelines_to_dict
from glioseg.model.checkpoint import read_checkpoint
from glioseg.training.distributed import World
from glioseg.training.loop import Trainer
from tests.conftest import TINY_PARAMS, square_slices

# 16 slices in global batches of 5: shares of 3 and 2, then a last batch of 1 that leaves rank 1
# with a padding repeat.
SLICES, BATCH, EPOCHS = 16, 5, 2
# Adam steps by lr * g / (|g| + eps): with the default eps (1e-8) a weight whose gradient is
# below float noise (~1e-7, thousands of them here) moves by up to +-lr in a direction set by
# the noise, so two reduction orders (one process, or two ranks) end up lr apart in weight space
# while their losses agree to 1e-6. A larger eps keeps such steps proportional to the gradient,
# so the weights show whether the gradients were the same.
ADAM_EPS = 1e-3


def trainer(epochs: int) -> Trainer:
    model = {**TINY_PARAMS["model"], "norm": "group"}
    # fp32: bf16 autocast (CPU training where the CPU has it) would round the reduction-order noise
    # of the two set-ups up to bf16's 3 significant digits, hiding what the test compares.
    # Class-balanced weights: without them this tiny set's tumour gradients are weaker and two
    # reduction orders drift up to 1.5e-4 apart in 2 epochs (5% of one Adam step at lr 0.003),
    # above the tolerance that still tells a wrong gradient (a full step) from rounding.
    # A moving average of the weights (train.ema) follows the same steps on every rank.
    train = {**TINY_PARAMS["train"], "amp": False, "weight_map": {"class_balance": True}, "ema": 0.5}
    # Brightness and contrast are drawn per slice of the global batch: the ranks must draw alike.
    augment = {**TINY_PARAMS["augment"], "brightness_contrast": 0.5}
    params = parse_params(
        {**TINY_PARAMS, "epochs": epochs, "batch_size": BATCH, "model": model, "train": train, "augment": augment}
    )
    slices = square_slices(SLICES, 32, seed=0)
    val = square_slices(6, 32, seed=1, patients=2)
    pipelines = pipelines_to_dict(build_pipelines(params.augment, slices.images))
    built = Trainer(params, slices, val, pipelines, fingerprint="f")
    for group in built.optimizer.param_groups:
        group["eps"] = ADAM_EPS
    return built


def train_rank(rank: int, port: int, out: Path) -> None:
    """One of two ranks, set up as torchrun would: a run to the end, then one interrupted and resumed."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank)
    )
    whole = trainer(EPOCHS)
    outcome = whole.fit(out / f"rank{rank}")
    trainer(1).fit(out / "shared")
    resumed = trainer(EPOCHS)
    resumed_outcome = resumed.fit(out / "shared")
    torch.save(
        {
            "model": whole.model.state_dict(),
            "kept": whole.kept_model.state_dict(),
            "train_loss": outcome.history["train_loss"].tolist(),
            "val_dice": outcome.history["val_dice"].tolist(),
            "resumed_model": resumed.model.state_dict(),
            "resumed_from": resumed_outcome.resumed_from,
        },
        out / f"result{rank}.pt",
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_shares_split_a_batch_and_weight_the_loss():
    shares = [World(torch.device("cpu"), rank, 2).share(5) for rank in (0, 1)]
    assert [(s.rows, s.own, s.weight) for s in shares] == [(slice(0, 3), 3, 1.2), (slice(3, 5), 2, 0.8)]
    padded = World(torch.device("cpu"), 1, 2).share(1)
    assert (padded.rows, padded.own, padded.weight) == ([0], 0, 0.0)
    assert World(torch.device("cpu")).share(5).rows == slice(0, 5)


@pytest.mark.slow  # 20-30 s on 2 busy cores, mostly two fresh interpreters importing torch
def test_two_gloo_ranks_train_the_model_of_one_process(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    mp.spawn(train_rank, args=(free_port(), tmp_path), nprocs=2)
    results = [torch.load(tmp_path / f"result{rank}.pt") for rank in (0, 1)]
    single = trainer(EPOCHS)
    outcome = single.fit(tmp_path / "single")

    assert (tmp_path / "rank0" / "last.pt").is_file()
    assert not (tmp_path / "rank1").exists(), "only rank 0 writes checkpoints"
    written = read_checkpoint(tmp_path / "rank0" / "last.pt")["model"]
    for key, value in single.model.state_dict().items():
        torch.testing.assert_close(written[key], value, rtol=1e-4, atol=1e-5, msg=key)
        assert torch.equal(results[0]["model"][key], results[1]["model"][key]), key
        assert torch.equal(results[0]["kept"][key], results[1]["kept"][key]), key
        torch.testing.assert_close(
            results[0]["kept"][key], single.kept_model.state_dict()[key], rtol=1e-4, atol=1e-5, msg=key
        )
        assert torch.equal(results[0]["resumed_model"][key], results[0]["model"][key]), key
    np.testing.assert_allclose(results[0]["train_loss"], outcome.history["train_loss"], rtol=1e-4)
    assert results[0]["val_dice"] == results[1]["val_dice"]
    assert [r["resumed_from"] for r in results] == [1, 1]


@pytest.mark.parametrize("stage", ["evaluate", "sweep_evaluate"])
def test_under_torchrun_only_rank_0_evaluates(monkeypatch, tmp_path, stage):
    from glioseg.pipeline.stages import evaluate as scoring
    from glioseg.pipeline.stages import sweep_evaluate

    monkeypatch.chdir(tmp_path)  # nothing to evaluate here: a rank that tried would fail on the missing model
    monkeypatch.setenv("RANK", "1")
    params = parse_params({**TINY_PARAMS, "sweeps": {"dice": {"loss": "dice"}}})
    if stage == "evaluate":
        assert scoring.run(params) == {"rank": 1}
    else:
        assert sweep_evaluate.run(params, "dice") == {"rank": 1}
    assert not any(tmp_path.iterdir())


def test_a_sweep_rank_other_than_0_trains_its_share_and_writes_nothing(monkeypatch, tmp_path):
    from glioseg.pipeline.stages import sweep_train
    from glioseg.pipeline.stages import train as experiment

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(experiment, "train_run", lambda config, run_name, out_dir, tags: {"rank": 1})
    params = parse_params({**TINY_PARAMS, "sweeps": {"dice": {"loss": "dice"}}})
    assert sweep_train.run(params, "dice") == {"rank": 1}
    assert not any(tmp_path.iterdir())
