import re
from pathlib import Path

import numpy as np
import pytest
import tifffile

from glioseg.errors import DataError
from glioseg.formats.kaggle3m import list_pairs, list_patients, read_image, read_mask, validate_pair


def write_image(path: Path, size: int = 16, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.full((size, size, 3), value, dtype=np.uint8), photometric="rgb")
    return path


def write_mask(path: Path, size: int = 16, pixels: int = 4) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((size, size), dtype=np.uint8)
    mask.flat[:pixels] = 255
    tifffile.imwrite(path, mask, photometric="minisblack")
    return path


def write_pair(root: Path, patient: str, n: int) -> tuple[Path, Path]:
    folder = root / patient
    return write_image(folder / f"{patient}_{n}.tif"), write_mask(folder / f"{patient}_{n}_mask.tif")


def test_list_pairs_sorts_by_patient_then_slice_number(tmp_path):
    for patient in ["TCGA_B_0002", "TCGA_A_0001"]:
        for n in [10, 2, 9, 1]:
            write_pair(tmp_path, patient, n)

    pairs = list_pairs(tmp_path)

    assert list(pairs.columns) == ["patient", "slice", "image", "mask"]
    assert list(pairs["patient"]) == ["TCGA_A_0001"] * 4 + ["TCGA_B_0002"] * 4
    assert list(pairs["slice"]) == [1, 2, 9, 10, 1, 2, 9, 10]
    first = pairs.iloc[3]
    assert first["image"] == tmp_path / "TCGA_A_0001" / "TCGA_A_0001_10.tif"
    assert first["mask"] == tmp_path / "TCGA_A_0001" / "TCGA_A_0001_10_mask.tif"
    assert isinstance(first["slice"], (int, np.integer))


def test_list_pairs_ignores_files_outside_the_layout(tmp_path):
    write_pair(tmp_path, "P1", 1)
    (tmp_path / "README.md").write_text("readme")
    (tmp_path / "data.csv").write_text("Patient,death01\n")
    (tmp_path / "P1" / "notes.txt").write_text("x")
    (tmp_path / "P1" / "P1_2.png").write_bytes(b"x")
    (tmp_path / "P1" / "OTHER_3.tif").write_bytes(b"x")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "empty_folder").mkdir()

    pairs = list_pairs(tmp_path)

    assert list(pairs["patient"]) == ["P1"]
    assert list(pairs["slice"]) == [1]
    assert list_patients(tmp_path) == ["P1"]


def test_image_without_mask_names_the_missing_mask(tmp_path):
    write_pair(tmp_path, "P1", 1)
    write_image(tmp_path / "P1" / "P1_3.tif")

    with pytest.raises(DataError, match=r"P1_3_mask\.tif") as error:
        list_pairs(tmp_path)
    assert str(tmp_path / "P1" / "P1_3_mask.tif") in str(error.value)
    assert "\n" not in str(error.value)


def test_mask_without_image_names_the_missing_image(tmp_path):
    write_pair(tmp_path, "P1", 1)
    write_mask(tmp_path / "P1" / "P1_4_mask.tif")

    with pytest.raises(DataError, match=r"P1_4\.tif"):
        list_pairs(tmp_path)


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="not found") as error:
        list_pairs(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(error.value)


def test_root_without_patient_folders(tmp_path):
    (tmp_path / "README.md").write_text("readme")
    (tmp_path / "empty_folder").mkdir()

    with pytest.raises(DataError, match="no patient folders") as error:
        list_pairs(tmp_path)
    assert str(tmp_path) in str(error.value)


def test_read_image_and_mask(tmp_path):
    image_path, mask_path = write_pair(tmp_path, "P1", 1)

    image = read_image(image_path)
    mask = read_mask(mask_path)

    assert image.shape == (16, 16, 3) and image.dtype == np.uint8
    assert int(image[0, 0, 0]) == 100
    assert mask.shape == (16, 16) and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1}
    assert int(mask.sum()) == 4


def test_read_mask_maps_any_nonzero_to_one(tmp_path):
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, np.array([[0, 1], [7, 255]], dtype=np.uint8), photometric="minisblack")

    assert read_mask(path).tolist() == [[0, 1], [1, 1]]


@pytest.mark.parametrize("payload", [b"this is not a tiff" * 20, b""])
def test_corrupt_tif_names_the_file(tmp_path, payload):
    path = tmp_path / "P1_1.tif"
    path.write_bytes(payload)

    for reader in (read_image, read_mask):
        with pytest.raises(DataError, match="not a readable TIF") as error:
            reader(path)
        assert str(path) in str(error.value)


def test_truncated_tif_is_unreadable(tmp_path):
    path = write_image(tmp_path / "P1_1.tif", size=64)
    path.write_bytes(path.read_bytes()[:2000])

    with pytest.raises(DataError, match=re.escape(str(path))):
        read_image(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_image(tmp_path / "absent.tif")


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((8, 8), dtype=np.uint8),  # one channel
        np.zeros((8, 8, 4), dtype=np.uint8),  # four channels
        np.zeros((8, 8, 3), dtype=np.uint16),  # wrong dtype
    ],
)
def test_read_image_rejects_wrong_channels_or_dtype(tmp_path, array):
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, array)

    with pytest.raises(DataError, match="expected an RGB uint8 image") as error:
        read_image(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    "array",
    [np.zeros((8, 8, 3), dtype=np.uint8), np.zeros((8, 8), dtype=np.float32)],
)
def test_read_mask_rejects_wrong_channels_or_dtype(tmp_path, array):
    path = tmp_path / "mask.tif"
    tifffile.imwrite(path, array)

    with pytest.raises(DataError, match="expected a single-channel uint8 mask"):
        read_mask(path)


def test_validate_pair_accepts_matching_sizes(tmp_path):
    image, mask = write_pair(tmp_path, "P1", 1)

    assert validate_pair(image, mask) == []


def test_validate_pair_rejects_wrong_size_mask(tmp_path):
    image = write_image(tmp_path / "P1" / "P1_1.tif", size=16)
    mask = write_mask(tmp_path / "P1" / "P1_1_mask.tif", size=12)

    with pytest.raises(DataError, match=r"12x12 but its image is 16x16") as error:
        validate_pair(image, mask)
    assert str(error.value).startswith(str(mask))
