import os

import numpy as np
import pytest
import tifffile

from glioseg.config.schema import parse_params
from glioseg.data.borders import border_distance_sum
from glioseg.data.cache import SliceArrays
from glioseg.data.transforms import build_pipelines, pipelines_to_dict

TINY_PARAMS = {
    "seed": 7,
    "lr": 0.003,
    "epochs": 3,
    "batch_size": 4,
    "augment": {"image_size": 32},
    "model": {"encoder": "resnet18", "encoder_depth": 3, "decoder_channels": [32, 16, 8]},
    "train": {"schedule": "constant", "keep": "best_val"},  # what the tests were written for
    "run": {"device": "cpu", "threads": 1},
}


def square_slices(n: int, size: int, seed: int, patients: int = 3) -> SliceArrays:
    """Images with a bright square whose pixels are exactly the mask (every third slice empty)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, size=(n, size, size, 3), dtype=np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        if i % 3:
            y, x = rng.integers(2, size - 12, size=2)
            masks[i, y : y + 10, x : x + 10] = 1
            if i % 3 == 2:
                masks[i, 1:4, 1:4] = 1
    images[masks > 0] = 220
    distance = np.stack([border_distance_sum(m) for m in masks]).astype(np.float16)
    patient = np.array([f"P{i % patients}" for i in range(n)])
    return SliceArrays(images, masks, distance, patient, np.arange(n), np.array(["train"] * n))


def write_slice(root, patient: str, n: int, brightness: int, two_tone: bool = False) -> dict:
    """A 32x32 kaggle_3m slice of one brightness (``two_tone``: its top half at half of it) with an empty mask."""
    folder = root / patient
    folder.mkdir(parents=True, exist_ok=True)
    image_path, mask_path = folder / f"{patient}_{n}.tif", folder / f"{patient}_{n}_mask.tif"
    image = np.full((32, 32, 3), brightness, np.uint8)
    if two_tone:
        image[:16] //= 2
    tifffile.imwrite(image_path, image, photometric="rgb")
    tifffile.imwrite(mask_path, np.zeros((32, 32), np.uint8), photometric="minisblack")
    return {"patient": patient, "slice": n, "image": str(image_path), "mask": str(mask_path)}


@pytest.fixture
def tiny_params():
    return parse_params(TINY_PARAMS)


@pytest.fixture
def tiny_data(tiny_params):
    train = square_slices(12, 32, seed=0)
    val = square_slices(6, 32, seed=1, patients=2)
    pipelines = pipelines_to_dict(build_pipelines(tiny_params.augment, train.images))
    return train, val, pipelines


def train_tiny_model(path, epochs: int = 1):
    """A tiny U-Net trained for ``epochs`` on square slices (seconds on a CPU), saved as a checkpoint at ``path``."""
    from glioseg.model.checkpoint import save_checkpoint
    from glioseg.training.loop import Trainer

    params = parse_params({**TINY_PARAMS, "epochs": epochs})
    train = square_slices(12, 32, seed=0)
    pipelines = pipelines_to_dict(build_pipelines(params.augment, train.images))
    outcome = Trainer(params, train, square_slices(6, 32, seed=1), pipelines, "p").fit(path.parent / "checkpoints")
    save_checkpoint(path, outcome.best)
    return path


@pytest.fixture(autouse=True)
def _tracking_uri_stays_with_its_test(monkeypatch):
    """mlflow.set_tracking_uri writes MLFLOW_TRACKING_URI into os.environ; undo it after each test."""
    if "MLFLOW_TRACKING_URI" in os.environ:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", os.environ["MLFLOW_TRACKING_URI"])
    else:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
