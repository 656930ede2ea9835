"""The download stage on real Kaggle LGG data, restored from ../shared/lgg (skipped without it)."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from glioseg.config.schema import Params
from glioseg.config.sections import SyntheticParams
from glioseg.formats import FORMATS
from glioseg.formats.kaggle3m import read_mask

SHARED_LGG = Path(__file__).resolve().parents[1].parent / "shared" / "lgg"
PATIENTS = 3

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not SHARED_LGG.is_dir(), reason=f"real LGG data not available at {SHARED_LGG}"),
]


@pytest.fixture(scope="module")
def restored(tmp_path_factory) -> Path:
    """The first patients restored as kaggle_3m TIFs, plus the Kaggle-style zip."""
    dest = tmp_path_factory.mktemp("lgg")
    subprocess.run(
        [sys.executable, str(SHARED_LGG / "restore.py"), str(dest), "--patients", str(PATIENTS), "--zip"],
        check=True,
        capture_output=True,
    )
    return dest


@pytest.fixture(scope="module")
def expected() -> pd.DataFrame:
    """Pairs and positive slices of the first patients, per the shared data's own manifest."""
    manifest = pd.read_csv(SHARED_LGG / "manifest.csv")
    first = sorted(manifest["patient"].unique())[:PATIENTS]
    return manifest[manifest["patient"].isin(first)]


def fetch(source: Path, out: Path) -> pd.DataFrame:
    return FORMATS["lgg"].fetch(
        str(source),
        out / "kaggle_3m",
        out / "manifest.csv",
        patients=PATIENTS,
        synthetic=SyntheticParams(),
        settings=None,
    )


def positives(manifest: pd.DataFrame) -> int:
    return sum(bool(read_mask(path).any()) for path in manifest["mask"])


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_fetch_matches_shared_manifest(restored, expected, tmp_path, kind):
    source = restored / "kaggle_3m" if kind == "folder" else restored / "lgg-mri-segmentation.zip"

    manifest = fetch(source, tmp_path)

    assert sorted(manifest["patient"].unique()) == sorted(expected["patient"].unique())
    assert len(manifest) == len(expected)
    assert positives(manifest) == int((expected["tumour_pixels"] > 0).sum())


def test_folder_and_zip_give_identical_files(restored, tmp_path):
    from_folder = fetch(restored / "kaggle_3m", tmp_path / "folder")
    from_zip = fetch(restored / "lgg-mri-segmentation.zip", tmp_path / "zip")

    columns = ["patient", "slice", "image_sha256", "mask_sha256"]
    pd.testing.assert_frame_equal(from_folder[columns], from_zip[columns])


@pytest.mark.parametrize("threshold", [2.0, 8.0])
def test_clean_and_labels_on_real_slices(restored, expected, tmp_path, threshold):
    from glioseg.data.clean import find_dark, measure_slices
    from glioseg.data.labels import build_labels

    manifest = fetch(restored / "kaggle_3m", tmp_path)
    measured = measure_slices(manifest, Params())
    removed = find_dark(measured, min_mean_intensity=threshold)
    labels = build_labels(manifest, removed, Params())

    truth = expected.set_index(["patient", "slice"])["tumour_pixels"]
    ours = labels.set_index(["patient", "slice"])
    assert len(labels) == len(expected)
    # masks are 0/255 on disk and 0/1 in memory: pixel counts must match the shared manifest exactly
    assert (ours["tumour_pixels"].reindex(truth.index) == truth).all()
    assert int(labels["diagnosis"].sum()) == int((truth > 0).sum())
    # the removed slices are exactly the ones darker than the threshold, computed here independently
    dark = {(row.patient, row.slice) for row in manifest.itertuples() if read_image_mean(row.image) < threshold}
    if threshold == 8.0:
        assert dark, "the check needs some dark slices among these patients"
    assert set(zip(removed["patient"], removed["slice"])) == dark
    assert labels.loc[labels["kept"] == 0, ["patient", "slice"]].apply(tuple, axis=1).tolist() == sorted(dark)


def read_image_mean(path: str) -> float:
    import tifffile

    return float(tifffile.imread(path).astype("float64").mean())
