"""clean, labels and cache on TIFs the tests write, with counts worked out by hand."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from glioseg.config.schema import Params, parse_params
from glioseg.data.build import build_cache
from glioseg.data.cache import load_cache, save_cache
from glioseg.data.clean import find_dark, measure_slices
from glioseg.data.labels import build_labels, count_components, summarise_labels
from glioseg.errors import DataError


def write_pair(root: Path, patient: str, n: int, brightness: int, blobs: list[tuple[int, int, int]]) -> dict:
    folder = root / patient
    folder.mkdir(parents=True, exist_ok=True)
    image = np.full((64, 64, 3), brightness, np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    for y, x, size in blobs:
        mask[y : y + size, x : x + size] = 255
    image_path, mask_path = folder / f"{patient}_{n}.tif", folder / f"{patient}_{n}_mask.tif"
    tifffile.imwrite(image_path, image, photometric="rgb")
    tifffile.imwrite(mask_path, mask, photometric="minisblack")
    return {"patient": patient, "slice": n, "image": str(image_path), "mask": str(mask_path)}


@pytest.fixture
def manifest(tmp_path):
    rows = [
        write_pair(tmp_path, "P1", 1, 1, []),  # dark, negative
        write_pair(tmp_path, "P1", 2, 90, [(10, 10, 5)]),  # one region of 25 px
        write_pair(tmp_path, "P1", 3, 90, [(5, 5, 4), (40, 40, 3)]),  # two regions, 16 + 9 px
        write_pair(tmp_path, "P2", 1, 1, [(0, 0, 2)]),  # dark but positive
        write_pair(tmp_path, "P2", 2, 90, []),
    ]
    return pd.DataFrame(rows)


def test_dark_slices_are_found_with_their_diagnosis(manifest):
    measured = measure_slices(manifest, Params())
    assert measured["mean_intensity"].tolist() == [1.0, 90.0, 90.0, 1.0, 90.0]
    removed = find_dark(measured, min_mean_intensity=2.0)
    assert list(zip(removed["patient"], removed["slice"], removed["diagnosis"])) == [("P1", 1, 0), ("P2", 1, 1)]
    assert removed["reason"].iloc[0] == "mean intensity 1.00 < 2"
    assert find_dark(measured, min_mean_intensity=0.5).empty


def test_labels_count_pixels_regions_and_kept(manifest):
    removed = find_dark(measure_slices(manifest, Params()), 2.0)
    labels = build_labels(manifest, removed, Params())
    assert labels["diagnosis"].tolist() == [0, 1, 1, 1, 0]
    assert labels["tumour_pixels"].tolist() == [0, 25, 25, 4, 0]
    assert labels["components"].tolist() == [0, 1, 2, 1, 0]
    assert labels["kept"].tolist() == [0, 1, 1, 0, 1]
    assert summarise_labels(labels) == {
        "pairs": 5,
        "positive": 3,
        "negative": 2,
        "removed": 2,
        "removed_positive": 1,
        "kept": 3,
        "patients": 2,
    }


def test_diagonal_neighbours_are_one_region():
    mask = np.zeros((5, 5), np.uint8)
    mask[1, 1] = mask[2, 2] = 1
    mask[4, 0] = 1
    assert count_components(mask) == 2


def test_cache_resizes_keeps_subsets_and_round_trips(manifest, tmp_path):
    labels = build_labels(manifest, find_dark(measure_slices(manifest, Params()), 2.0), Params())
    split = labels[labels["kept"] == 1][["patient", "slice", "diagnosis"]].assign(subset=["train", "train", "test"])
    arrays = build_cache(labels, split, parse_params({"augment": {"image_size": 32}}))
    assert arrays.images.shape == (3, 32, 32, 3) and arrays.images.dtype == np.uint8
    assert set(np.unique(arrays.masks)) == {0, 1}
    assert arrays.masks[0].sum() == pytest.approx(25 / 4, abs=3)  # 5x5 square at half size
    assert np.isinf(arrays.distance[0]).all()  # one region: no border term
    assert np.isfinite(arrays.distance[1]).all()  # two regions
    assert arrays.select("test").slice.tolist() == [2]
    save_cache(arrays, tmp_path / "c" / "slices.npz")
    loaded = load_cache(tmp_path / "c" / "slices.npz")
    np.testing.assert_array_equal(loaded.images, arrays.images)
    assert loaded.patient.tolist() == ["P1", "P1", "P2"]


def test_cache_errors_name_the_file(manifest, tmp_path):
    with pytest.raises(DataError, match="array cache not found"):
        load_cache(tmp_path / "absent.npz")
    labels = build_labels(manifest, find_dark(measure_slices(manifest, Params()), 2.0), Params())
    split = pd.DataFrame([{"patient": "P9", "slice": 1, "diagnosis": 0, "subset": "train"}])
    with pytest.raises(DataError, match="P9_1"):
        build_cache(labels, split, parse_params({"augment": {"image_size": 32}}))


def test_a_damaged_cache_is_one_line_naming_the_file_and_the_fix(tmp_path):
    from tests.conftest import square_slices

    path = tmp_path / "slices.npz"
    save_cache(square_slices(4, 32, seed=0), path)
    whole = path.read_bytes()
    for damaged in (whole[: len(whole) // 2], b"not a zip at all", whole[:-40]):
        path.write_bytes(damaged)
        expected = (
            r"slices\.npz: damaged \(\w+\); restore it with `dvc checkout .*slices\.npz` "
            r"or rebuild it with `dvc repro --force cache`"
        )
        with pytest.raises(DataError, match=expected):
            load_cache(path)
