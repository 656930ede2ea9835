import numpy as np
import pytest
import torch

from glioseg.config.schema import parse_params
from glioseg.data.transforms import build_pipelines, pipelines_to_dict
from glioseg.device import autocast_dtype, cpu_has_native_bf16, kernel_name
from glioseg.errors import ConfigError, TrainingError
from glioseg.model.checkpoint import load_model, read_checkpoint, save_checkpoint
from glioseg.training import distributed
from glioseg.training.loop import DeviceArrays, Trainer, scheduled_lr
from tests.conftest import TINY_PARAMS, square_slices


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
    assert (outcome.history["lr"] == tiny_params.lr).all()  # constant schedule
    assert outcome.best_epoch == int(outcome.history["val_dice"].idxmax()) + 1
    assert (tmp_path / "last.pt").is_file()


# The moving average (train.ema) is part of the resumed state: its kept weights must come back too.
@pytest.mark.parametrize(
    "train", [{"schedule": "constant"}, {"schedule": "cosine"}, {"ema": 0.9, "keep": "last"}, {"empty_slices": 0.5}]
)
def test_interrupted_run_resumes_to_the_same_weights(train, tiny_data, tmp_path):
    tiny_params = parse_params({**TINY_PARAMS, "train": {**TINY_PARAMS["train"], **train}})
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


def test_empty_slices_draws_every_foreground_slice_and_a_fresh_share_of_the_empty_ones(tiny_data):
    train, val, pipelines = tiny_data  # 12 slices: 0, 3, 6 and 9 without foreground
    params = parse_params({**TINY_PARAMS, "train": {**TINY_PARAMS["train"], "empty_slices": 0.5}})
    trainer = Trainer(params, train, val, pipelines, fingerprint="f")
    orders = [trainer.epoch_order().tolist() for _ in range(8)]
    foreground = {1, 2, 4, 5, 7, 8, 10, 11}
    for order in orders:
        assert len(order) == len(set(order)) == 10
        assert foreground <= set(order)
        assert len(set(order) - foreground) == 2 and set(order) - foreground <= {0, 3, 6, 9}
    assert len({frozenset(order) for order in orders}) > 1  # a fresh draw each epoch
    assert len({tuple(order) for order in orders}) == 8  # and a fresh shuffle


def test_every_slice_every_epoch_is_the_default_order(tiny_params, tiny_data):
    train, val, pipelines = tiny_data
    trainer = Trainer(tiny_params, train, val, pipelines, fingerprint="f")
    earlier_runs = torch.randperm(12, generator=torch.Generator().manual_seed(tiny_params.seed))
    assert torch.equal(trainer.epoch_order(), earlier_runs)


def test_no_empty_slices_and_no_foreground_is_refused_with_one_line(tiny_data):
    train, val, pipelines = tiny_data
    train.masks[:] = 0
    params = parse_params({**TINY_PARAMS, "train": {**TINY_PARAMS["train"], "empty_slices": 0}})
    with pytest.raises(ConfigError, match="train.empty_slices: 0 leaves no training slices"):
        Trainer(params, train, val, pipelines, fingerprint="f")


def test_a_loss_that_stops_being_finite_stops_training_and_keeps_the_last_good_epoch(
    tiny_params, tiny_data, tmp_path, monkeypatch
):
    train, val, pipelines = tiny_data
    trainer = Trainer(tiny_params, train, val, pipelines, fingerprint="f")
    real_epoch, calls = trainer.train_epoch, []

    def diverging_epoch():
        calls.append(1)
        stats = real_epoch()
        return {**stats, "loss": float("nan")} if len(calls) == 2 else stats

    monkeypatch.setattr(trainer, "train_epoch", diverging_epoch)
    with pytest.raises(
        TrainingError,
        match=r"epoch 2: train_loss nan, not finite; training stopped and .*last\.pt "
        r"keeps epoch 1",
    ):
        trainer.fit(tmp_path)
    kept = read_checkpoint(tmp_path / "last.pt")
    assert kept["epoch"] == 1 and all(np.isfinite(row["train_loss"]) for row in kept["history"])


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


def test_train_batch_dice_reaches_the_training_loss(tiny_data):
    train, val, pipelines = tiny_data
    default = Trainer(parse_params(TINY_PARAMS), train, val, pipelines, fingerprint="f")
    params = parse_params({**TINY_PARAMS, "train": {**TINY_PARAMS["train"], "batch_dice": True}})
    batched = Trainer(params, train, val, pipelines, fingerprint="f")
    assert (default.loss_fn.batch_dice, batched.loss_fn.batch_dice) == (False, True)


def test_train_batch_dice_under_torchrun_is_refused_with_one_line(tiny_data, monkeypatch):
    train, val, pipelines = tiny_data
    monkeypatch.setattr(distributed, "init", lambda device: distributed.World(device, rank=0, size=2))
    params = parse_params({**TINY_PARAMS, "train": {**TINY_PARAMS["train"], "batch_dice": True}})
    with pytest.raises(ConfigError, match=r"^train.batch_dice: true is not supported under torchrun"):
        Trainer(params, train, val, pipelines, fingerprint="f")


def test_best_model_round_trips_with_weights_only(tiny_params, tiny_data, tmp_path):
    outcome = fit(tiny_params, tiny_data, tmp_path)
    save_checkpoint(tmp_path / "model.pt", outcome.best)
    loaded = load_model(tmp_path / "model.pt")
    assert loaded.inference.threshold == pytest.approx(0.3)
    assert set(loaded.pipelines) == {"preprocess", "train", "eval"}
    x = torch.zeros(1, 3, 32, 32)
    assert loaded.model(x).shape == (1, 1, 32, 32)


def test_scheduled_lr_constant_and_cosine():
    assert scheduled_lr(1e-3, "constant", 0.7) == 1e-3
    assert scheduled_lr(1e-3, "cosine", 0.0) == pytest.approx(1e-3)
    assert scheduled_lr(1e-3, "cosine", 0.5) == pytest.approx((1e-3 + 1e-5) / 2)
    assert scheduled_lr(1e-3, "cosine", 1.0) == pytest.approx(1e-5)
    curve = [scheduled_lr(1e-3, "cosine", x / 10) for x in range(11)]
    assert curve == sorted(curve, reverse=True)


def test_cosine_schedule_sets_the_rate_of_every_step(tiny_data, tmp_path):
    train, val, pipelines = tiny_data
    params = parse_params({**TINY_PARAMS, "train": {**TINY_PARAMS["train"], "schedule": "cosine"}})
    trainer = Trainer(params, train, val, pipelines, fingerprint="f")
    trainer.fit(tmp_path)
    steps = -(-len(train) // params.batch_size)
    last_step = (params.epochs - 1 + (steps - 1) / steps) / params.epochs
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(scheduled_lr(params.lr, "cosine", last_step))
    assert trainer.optimizer.param_groups[0]["lr"] < params.lr / 10


def test_cpu_training_precision_follows_the_cpu(tiny_params, tiny_data):
    """bf16 autocast for CPU training only where oneDNN has native bf16; CPU inference stays fp32."""
    cpu = torch.device("cpu")
    native = torch.bfloat16 if cpu_has_native_bf16() else None
    assert autocast_dtype(cpu, True, cpu=True) == native
    assert autocast_dtype(cpu, True) is None and autocast_dtype(cpu, False, cpu=True) is None
    train, val, pipelines = tiny_data
    assert Trainer(tiny_params, train, val, pipelines, fingerprint="f").precision == native
    fp32 = parse_params({**TINY_PARAMS, "train": {**TINY_PARAMS["train"], "amp": False}})
    trainer = Trainer(fp32, train, val, pipelines, fingerprint="f")
    assert trainer.precision is None
    meta = trainer.payload()["meta"]
    assert meta["training_precision"] == "fp32"
    assert meta["training_kernels"] == kernel_name(cpu)
    assert meta["training_kernels"].startswith(torch.backends.cpu.get_cpu_capability().lower())


@pytest.mark.parametrize(
    ("capability", "amx", "name"),
    [
        ("AVX2", False, "avx2"),
        ("AVX512", False, "avx512"),
        ("AVX512", True, "avx512_amx"),
    ],
)
def test_kernel_name_tells_amx_cpus_apart(monkeypatch, capability, amx, name):
    """torch reports AVX512 on AMD AVX512 and Intel AMX CPUs alike, which train to different numbers."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert kernel_name(torch.device("cpu")) == name
    assert kernel_name(torch.device("cuda")) == "cuda"


def test_gradient_clipping_bounds_every_step(tiny_data, tmp_path):
    train, val, pipelines = tiny_data
    params = parse_params({**TINY_PARAMS, "epochs": 2, "train": {**TINY_PARAMS["train"], "clip_grad_norm": 0.01}})
    trainer = Trainer(params, train, val, pipelines, fingerprint="f")
    outcome = trainer.fit(tmp_path)
    assert (outcome.history["train_grad_norm"] > 0.01).all()  # the norms before clipping...
    grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
    assert float(torch.nn.utils.get_total_norm(grads)) <= 0.01 * 1.001  # ...and the last step's after it


def test_clip_grad_norm_must_be_positive():
    from glioseg.errors import ConfigError

    with pytest.raises(ConfigError, match="train.clip_grad_norm"):
        parse_params({**TINY_PARAMS, "train": {"clip_grad_norm": 0}})


def test_best_payload_is_a_snapshot_not_the_live_weights(tiny_params, tiny_data):
    train, val, pipelines = tiny_data
    trainer = Trainer(tiny_params, train, val, pipelines, fingerprint="f")
    snapshot = trainer.payload(epoch=1)
    before = {k: v.clone() for k, v in snapshot["state_dict"].items()}
    trainer.train_epoch()
    changed = [k for k, v in trainer.model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed  # training moved the weights...
    for key, value in snapshot["state_dict"].items():
        assert torch.equal(value, before[key]), key  # ...and not the snapshot's


def test_keep_last_keeps_the_final_weights(tiny_data, tmp_path):
    train, val, pipelines = tiny_data
    params = parse_params({**TINY_PARAMS, "train": {**TINY_PARAMS["train"], "keep": "last"}})
    trainer = Trainer(params, train, val, pipelines, fingerprint="f")
    outcome = trainer.fit(tmp_path)
    assert outcome.best_epoch == params.epochs and outcome.best["meta"]["epoch"] == params.epochs
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, outcome.best["state_dict"][key]), key


def test_ema_keeps_the_moving_average_of_the_weights_and_batch_norm_statistics(tiny_data):
    """One step per epoch, decay 0.25: the average after two steps is 0.25 w1 + 0.75 w2 (known answer)."""
    train, val, pipelines = tiny_data
    params = parse_params(
        {**TINY_PARAMS, "epochs": 2, "batch_size": len(train.images), "train": {"ema": 0.25, "keep": "last"}}
    )
    trainer = Trainer(params, train, val, pipelines, fingerprint="f")
    trainer.train_epoch()
    first = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    for key, value in trainer.kept_model.state_dict().items():
        assert torch.equal(value, first[key]), key  # the first update copies
    trainer.train_epoch()
    second = trainer.model.state_dict()
    averaged = trainer.kept_model.state_dict()
    floats = [k for k, v in second.items() if v.is_floating_point()]
    assert any("running_mean" in k for k in floats)
    for key in floats:
        torch.testing.assert_close(averaged[key], 0.25 * first[key] + 0.75 * second[key], msg=key)
    assert not torch.equal(averaged[floats[0]], second[floats[0]])
    assert all(torch.equal(v, trainer.payload()["state_dict"][k]) for k, v in averaged.items())


def test_crop_training_learns_on_crops_and_validates_whole_slices(tmp_path):
    params = parse_params({**TINY_PARAMS, "augment": {"image_size": 64, "crop": 32}})
    train, val = square_slices(12, 64, seed=0), square_slices(6, 64, seed=1, patients=2)
    pipelines = pipelines_to_dict(build_pipelines(params.augment, train.images))
    trainer = Trainer(params, train, val, pipelines, fingerprint="f")
    seen = set()
    trainer.model.register_forward_hook(lambda module, inputs, output: seen.add(tuple(inputs[0].shape[-2:])))
    outcome = trainer.fit(tmp_path)
    assert seen == {(32, 32), (64, 64)}  # training batches are crops, validation sees whole slices
    assert outcome.history["val_dice"].notna().all()


@pytest.mark.parametrize("augmentation", ["brightness_contrast", "affine"])
def test_intensity_and_affine_augmentation_reach_the_training_batches(tiny_data, tmp_path, augmentation):
    train, val, _ = tiny_data

    def first_training_batch(probability: float) -> torch.Tensor:
        params = parse_params({**TINY_PARAMS, "epochs": 1, "augment": {"image_size": 32, augmentation: probability}})
        pipelines = pipelines_to_dict(build_pipelines(params.augment, train.images))
        trainer = Trainer(params, train, val, pipelines, fingerprint="f")
        batches = []
        trainer.model.register_forward_hook(
            lambda module, inputs, output: batches.append(inputs[0].clone()) if module.training else None
        )
        trainer.fit(tmp_path / str(probability))
        return batches[0]

    plain, adjusted = first_training_batch(0.0), first_training_batch(1.0)
    assert plain.shape == adjusted.shape
    # p = 1: every slice of the batch has its values changed.
    assert not torch.isclose(plain, adjusted).all(dim=(1, 2, 3)).any()


@pytest.mark.slow
def test_compiled_training_trains_the_same_model_as_eager(tiny_data):
    """torch.compile (inductor on the CPU) changes how the step runs, not what it computes.

    Float rounding differs, and Adam turns a tiny gradient difference into up to a full step of
    lr, so the weights are compared by how far training moved them: the compiled run ends within
    5% of that distance from the eager run (about 0.4% here).
    """
    train, val, pipelines = tiny_data
    runs = {}
    for mode in ("none", "default"):
        params = parse_params(
            {**TINY_PARAMS, "epochs": 1, "train": {**TINY_PARAMS["train"], "amp": False, "compile": mode}}
        )
        trainer = Trainer(params, train, val, pipelines, fingerprint="f")
        initial = {key: value.clone() for key, value in trainer.model.state_dict().items()}
        runs[mode] = (trainer.train_epoch()["loss"], trainer.payload()["state_dict"])
    (eager_loss, eager), (compiled_loss, compiled) = runs["none"], runs["default"]
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-3)
    assert compiled.keys() == eager.keys()  # the checkpoint holds the plain module's names, no _orig_mod.
    weights = [key for key in eager if key.endswith("weight")]
    moved = sum(float((eager[key] - initial[key]).abs().sum()) for key in weights)
    apart = sum(float((compiled[key] - eager[key]).abs().sum()) for key in weights)
    assert moved > 0 and apart < 0.05 * moved


HOST_READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")


def count_host_reads(monkeypatch) -> dict[str, int]:
    """Count calls of the Tensor methods that read a value back to the host (a CUDA sync on a GPU)."""
    calls = dict.fromkeys(HOST_READS, 0)
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return calls


@pytest.mark.parametrize("clip", [None, 1.0])
def test_an_epoch_reads_values_back_to_the_host_a_fixed_number_of_times_not_per_step(clip, tiny_data, monkeypatch):
    """On a GPU each read-back waits for the device: the step loop must not make any."""
    train, val, pipelines = tiny_data
    params = parse_params({**TINY_PARAMS, "train": {**TINY_PARAMS["train"], "clip_grad_norm": clip}})
    trainer = Trainer(params, train, val, pipelines, fingerprint="f")
    reads = []
    for slices in (4, 12):  # 1 and 3 steps of batch 4
        trainer.train_data = DeviceArrays.from_arrays(train.take(np.arange(slices)), trainer.device)
        with monkeypatch.context() as patch:
            calls = count_host_reads(patch)
            trainer.train_epoch()
        reads.append(calls)
    assert reads[0] == reads[1]
    assert sum(reads[0].values()) <= 6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: counts synchronising CUDA calls")
def test_a_cuda_epoch_synchronises_a_fixed_number_of_times_not_per_step(tiny_data):
    import warnings

    train, val, pipelines = tiny_data
    params = parse_params({**TINY_PARAMS, "train": {"clip_grad_norm": 1.0}, "run": {"device": "cuda", "threads": 1}})
    trainer = Trainer(params, train, val, pipelines, fingerprint="f")
    trainer.train_epoch()  # warm-up: lazy CUDA initialisation synchronises too
    syncs = []
    for slices in (4, 12):
        trainer.train_data = DeviceArrays.from_arrays(train.take(np.arange(slices)), trainer.device)
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                trainer.train_epoch()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        syncs.append(sum("synchroniz" in str(w.message) for w in caught))
    assert syncs[0] == syncs[1]
