import re
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from glioseg.formats.kaggle3m import list_pairs
from glioseg.formats.synthetic.lgg import generate_lgg

PATIENTS, SLICES, SIZE = 10, 20, 256
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """The default-sized set (10 x 20 at 256 px), its pairs and how long it took."""
    root = tmp_path_factory.mktemp("synthetic") / "kaggle_3m"
    start = time.perf_counter()
    generate_lgg(root, PATIENTS, SLICES, SIZE, seed=0)
    elapsed = time.perf_counter() - start
    return root, list_pairs(root), elapsed


@pytest.fixture(scope="module")
def volumes(generated):
    """{patient: (images (S, H, W, 3), raw masks (S, H, W))} read straight from the TIFs."""
    _, pairs, _ = generated
    return {
        patient: (
            np.stack([tifffile.imread(p) for p in group["image"]]),
            np.stack([tifffile.imread(p) for p in group["mask"]]),
        )
        for patient, group in pairs.groupby("patient")
    }


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def components(mask: np.ndarray) -> int:
    return ndimage.label(mask > 0, structure=EIGHT_CONNECTED)[1]


def test_generation_is_fast(generated):
    assert generated[2] < 5.0


def test_layout_and_patient_names(generated):
    root, pairs, _ = generated
    patients = sorted(p.name for p in root.iterdir())
    assert len(patients) == PATIENTS
    assert all(re.fullmatch(r"TCGA_[A-Z]{2}_\d{4}_\d{8}", p) for p in patients)
    # Consecutive blocks of four patients share a site, so sorted ids keep the generation order.
    sites = ["AA"] * 4 + ["AB"] * 4 + ["AC"] * 4
    assert [p[:12] for p in patients] == [f"TCGA_{sites[i - 1]}_{i:04d}" for i in range(1, PATIENTS + 1)]
    assert len(pairs) == PATIENTS * SLICES
    for patient in patients:
        names = sorted(p.name for p in (root / patient).iterdir())
        expected = sorted([f"{patient}_{n}.tif" for n in range(1, SLICES + 1)])
        expected += [f"{patient}_{n}_mask.tif" for n in range(1, SLICES + 1)]
        assert names == sorted(expected)


def test_shapes_dtypes_and_photometric(generated):
    _, pairs, _ = generated
    first = pairs.iloc[SLICES // 2]
    with tifffile.TiffFile(first["image"]) as tif:
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.RGB
        image = tif.asarray()
    with tifffile.TiffFile(first["mask"]) as tif:
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK
        mask = tif.asarray()
    assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
    assert mask.shape == (SIZE, SIZE) and mask.dtype == np.uint8


def test_masks_hold_only_0_and_255(volumes):
    values = set()
    for _, masks in volumes.values():
        values |= set(np.unique(masks).tolist())
    assert values == {0, 255}


def test_end_slices_are_near_black_but_not_zero(volumes):
    for images, _ in volumes.values():
        means = images.reshape(SLICES, -1).mean(axis=1)
        assert means[0] < 2 and means[-1] < 2
        assert means[SLICES // 2] > 10  # the head is there
        assert 0 < images[0].max() <= 3  # scanner-like noise, not exact zeros
        assert images[0].mean() > 0.5


def test_channels_have_different_contrasts(volumes):
    images, _ = next(iter(volumes.values()))
    middle = images[SLICES // 2].astype(float)
    head = middle.sum(axis=-1) > 60
    means = sorted(middle[..., c][head].mean() for c in range(3))
    assert means[1] - means[0] > 2 and means[2] - means[1] > 2


def test_tumours_are_bright_in_flair(volumes):
    for images, masks in volumes.values():
        tumour = masks > 0
        if not tumour.any():
            continue
        head = (images.sum(axis=-1) > 60) & ~tumour
        flair = images[..., 1].astype(float)
        assert flair[tumour].mean() > flair[head].mean() + 40


def test_component_counts_vary(volumes):
    counts = [components(mask) for _, masks in volumes.values() for mask in masks]
    singles = sum(c == 1 for c in counts)
    several = sum(c >= 2 for c in counts)
    assert counts.count(0) > 0
    assert singles > several > 0
    assert max(counts) >= 2


def test_tumour_sizes_vary(volumes):
    sizes = [int((mask > 0).sum()) for _, masks in volumes.values() for mask in masks if mask.any()]
    assert min(sizes) < 200 < 1000 < max(sizes)


def test_tumours_lie_on_a_contiguous_run_of_middle_slices(volumes):
    for _, masks in volumes.values():
        positive = np.flatnonzero(masks.reshape(SLICES, -1).any(axis=1))
        if positive.size == 0:
            continue
        assert np.array_equal(positive, np.arange(positive[0], positive[-1] + 1))
        assert positive[0] >= 2 and positive[-1] <= SLICES - 3


def test_some_patients_have_no_tumour(volumes):
    tumour_free = [p for p, (_, masks) in volumes.items() if not masks.any()]
    assert 1 <= len(tumour_free) < PATIENTS


@pytest.mark.parametrize("seed", [1, 7])
def test_any_five_patients_include_a_tumour_free_one(tmp_path, seed):
    generate_lgg(tmp_path, 5, 4, 32, seed=seed)
    positives = [any(tifffile.imread(m).any() for m in p.glob("*_mask.tif")) for p in tmp_path.iterdir()]
    assert positives.count(False) == 1


def test_same_arguments_give_identical_bytes(tmp_path):
    generate_lgg(tmp_path / "a", 3, 6, 64, seed=5)
    generate_lgg(tmp_path / "b", 3, 6, 64, seed=5)

    a, b = files(tmp_path / "a"), files(tmp_path / "b")
    assert len(a) == 3 * 6 * 2
    assert a == b


def test_different_seed_gives_different_data(tmp_path):
    generate_lgg(tmp_path / "a", 2, 6, 64, seed=0)
    generate_lgg(tmp_path / "b", 2, 6, 64, seed=1)

    a = [p.read_bytes() for p in sorted((tmp_path / "a").rglob("*_3.tif"))]
    b = [p.read_bytes() for p in sorted((tmp_path / "b").rglob("*_3.tif"))]
    assert len(a) == len(b) == 2
    assert all(x != y for x, y in zip(a, b))


def test_fewer_patients_give_a_prefix_of_more(tmp_path):
    generate_lgg(tmp_path / "two", 2, 5, 32, seed=3)
    generate_lgg(tmp_path / "four", 4, 5, 32, seed=3)

    two, four = files(tmp_path / "two"), files(tmp_path / "four")
    assert two == {k: v for k, v in four.items() if k.split("/")[0] in {k.split("/")[0] for k in two}}
    assert len(two) == 20 and len(four) == 40


def test_too_few_slices_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="at least 4 slices"):
        generate_lgg(tmp_path, 1, 3)
