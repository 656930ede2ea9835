import hashlib
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from glioseg.config.sections import SyntheticParams
from glioseg.errors import DataError
from glioseg.formats import FORMATS
from glioseg.formats.base import MANIFEST_COLUMNS
from glioseg.formats.synthetic.lgg import generate_lgg

PATIENTS, SLICES, SIZE = 4, 5, 32
SYNTHETIC = SyntheticParams(patients=3, slices=4, size=32, seed=0)


@pytest.fixture
def source(tmp_path) -> Path:
    """A small kaggle_3m folder, with the README and data.csv Kaggle puts beside the patients."""
    root = tmp_path / "download" / "kaggle_3m"
    generate_lgg(root, PATIENTS, SLICES, SIZE, seed=2)
    (root / "README.md").write_text("LGG segmentation dataset\n")
    (root / "data.csv").write_text("Patient,death01\n")
    return root


def patients_of(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def make_zip(path: Path, root: Path, prefixes: list[str]) -> Path:
    """Zip ``root``'s files once under each prefix (in that order), as Kaggle's archive does."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for prefix in prefixes:
            for file in sorted(root.rglob("*")):
                if file.is_file():
                    archive.write(file, f"{prefix}/{file.relative_to(root).as_posix()}")
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(source, tmp_path: Path, patients: int | None = None) -> pd.DataFrame:
    raw = tmp_path / "raw"
    manifest_path = raw / "manifest.csv"
    return FORMATS["lgg"].fetch(
        str(source), raw / "kaggle_3m", manifest_path, patients=patients, synthetic=SYNTHETIC, settings=None
    )


def assert_published(manifest: pd.DataFrame, tmp_path: Path, source_root: Path, patients: list[str]) -> None:
    """The manifest matches the files under dest, byte for byte the source's, and the CSV on disk."""
    dest = tmp_path / "raw" / "kaggle_3m"
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert sorted(manifest["patient"].unique()) == patients
    assert len(manifest) == len(patients) * SLICES
    assert patients_of(dest) == patients
    assert not (dest / "README.md").exists() and not (dest / "data.csv").exists()
    for row in manifest.itertuples():
        image, mask = Path(row.image), Path(row.mask)
        assert image == dest / row.patient / f"{row.patient}_{row.slice}.tif"
        assert mask == dest / row.patient / f"{row.patient}_{row.slice}_mask.tif"
        assert row.image_sha256 == sha256(image) == sha256(source_root / row.patient / image.name)
        assert row.mask_sha256 == sha256(mask) == sha256(source_root / row.patient / mask.name)
    on_disk = pd.read_csv(tmp_path / "raw" / "manifest.csv")
    pd.testing.assert_frame_equal(on_disk, manifest, check_dtype=False)


def test_fetch_from_kaggle_3m_folder(tmp_path, source):
    manifest = fetch(source, tmp_path)

    assert_published(manifest, tmp_path, source, patients_of(source))
    assert list(manifest["slice"][:SLICES]) == list(range(1, SLICES + 1))


def test_fetch_from_folder_containing_kaggle_3m(tmp_path, source):
    manifest = fetch(source.parent, tmp_path)

    assert_published(manifest, tmp_path, source, patients_of(source))


def test_copies_keep_file_times(tmp_path, source):
    manifest = fetch(source, tmp_path)

    copied = Path(manifest["image"].iloc[0])
    original = source / copied.parent.name / copied.name
    assert copied.stat().st_mtime == original.stat().st_mtime


def test_manifest_paths_are_relative_posix_when_dest_is(tmp_path, source, monkeypatch):
    monkeypatch.chdir(tmp_path)

    dest, manifest_path = Path("data/raw/kaggle_3m"), Path("data/raw/manifest.csv")
    manifest = FORMATS["lgg"].fetch(str(source), dest, manifest_path, patients=1, synthetic=SYNTHETIC, settings=None)

    first = patients_of(source)[0]
    assert manifest["image"].iloc[0] == f"data/raw/kaggle_3m/{first}/{first}_1.tif"
    assert manifest["mask"].iloc[0] == f"data/raw/kaggle_3m/{first}/{first}_1_mask.tif"
    assert pd.read_csv("data/raw/manifest.csv")["image"].iloc[0] == manifest["image"].iloc[0]


def test_fetch_from_kaggle_zip_uses_top_level_copy_once(tmp_path, source):
    # The nested duplicate comes first in the archive and holds a corrupt image: reading it would fail.
    duplicate = tmp_path / "duplicate"
    generate_lgg(duplicate, PATIENTS, SLICES, SIZE, seed=2)
    next(duplicate.rglob("*_2.tif")).write_bytes(b"garbage")
    archive = tmp_path / "lgg-mri-segmentation.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for file in sorted(duplicate.rglob("*")):
            z.write(file, f"lgg-mri-segmentation/kaggle_3m/{file.relative_to(duplicate).as_posix()}")
    make_zip(tmp_path / "top.zip", source, ["kaggle_3m"])
    with zipfile.ZipFile(tmp_path / "top.zip") as top, zipfile.ZipFile(archive, "a") as z:
        for info in top.infolist():
            z.writestr(info, top.read(info))

    manifest = fetch(archive, tmp_path)

    assert_published(manifest, tmp_path, source, patients_of(source))
    assert not manifest.duplicated(["patient", "slice"]).any()


def test_fetch_from_zip_falls_back_to_nested_kaggle_3m(tmp_path, source):
    archive = make_zip(tmp_path / "lgg.zip", source, ["lgg-mri-segmentation/kaggle_3m"])

    manifest = fetch(archive, tmp_path)

    assert_published(manifest, tmp_path, source, patients_of(source))


def test_patients_keeps_the_first_n_sorted(tmp_path, source):
    first_two = patients_of(source)[:2]

    from_folder = fetch(source, tmp_path, patients=2)
    assert_published(from_folder, tmp_path, source, first_two)

    archive = make_zip(tmp_path / "lgg.zip", source, ["kaggle_3m"])
    from_zip = fetch(archive, tmp_path, patients=2)
    assert_published(from_zip, tmp_path, source, first_two)
    pd.testing.assert_frame_equal(from_zip, from_folder)


def test_fetch_synthetic(tmp_path):
    manifest = fetch("synthetic", tmp_path)

    dest = tmp_path / "raw" / "kaggle_3m"
    assert manifest["patient"].nunique() == SYNTHETIC.patients
    assert len(manifest) == SYNTHETIC.patients * SYNTHETIC.slices
    assert patients_of(dest) == sorted(manifest["patient"].unique())
    assert all(sha256(Path(p)) == h for p, h in zip(manifest["image"], manifest["image_sha256"]))


def test_fetch_synthetic_subset_is_a_prefix_of_the_full_set(tmp_path):
    full = fetch("synthetic", tmp_path / "full")
    subset = fetch("synthetic", tmp_path / "subset", patients=2)

    assert subset["patient"].nunique() == 2
    columns = ["patient", "slice", "image_sha256", "mask_sha256"]
    expected = full[full["patient"].isin(subset["patient"])][columns].reset_index(drop=True)
    pd.testing.assert_frame_equal(subset[columns], expected)


def test_missing_source_path(tmp_path):
    with pytest.raises(DataError, match="no such file or folder") as error:
        fetch(tmp_path / "nowhere", tmp_path)
    assert str(tmp_path / "nowhere") in str(error.value)
    assert not (tmp_path / "raw" / "kaggle_3m").exists()


def test_file_that_is_not_a_zip(tmp_path):
    bogus = tmp_path / "lgg.zip"
    bogus.write_bytes(b"PK\x03\x04 but not really a zip" * 10)

    with pytest.raises(DataError, match="not a valid zip file") as error:
        fetch(bogus, tmp_path)
    assert str(bogus) in str(error.value)


def test_zip_without_kaggle_3m(tmp_path, source):
    archive = make_zip(tmp_path / "other.zip", source, ["something_else"])

    with pytest.raises(DataError, match=r"no kaggle_3m/<patient>"):
        fetch(archive, tmp_path)


def test_zip_with_damaged_member(tmp_path, source):
    archive = make_zip(tmp_path / "lgg.zip", source, ["kaggle_3m"])
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("_1.tif"))
    data[info.header_offset + 30 + len(info.filename) + 200] ^= 0xFF  # flip a byte of the stored data
    archive.write_bytes(bytes(data))

    with pytest.raises(DataError, match="damaged zip") as error:
        fetch(archive, tmp_path)
    assert str(archive) in str(error.value)
    assert not (tmp_path / "raw" / "kaggle_3m").exists()


def test_zip_missing_mask_names_the_member(tmp_path, source):
    patient = patients_of(source)[1]
    (source / patient / f"{patient}_3_mask.tif").unlink()
    archive = make_zip(tmp_path / "lgg.zip", source, ["kaggle_3m"])

    with pytest.raises(DataError, match=re.escape(f"kaggle_3m/{patient}/{patient}_3_mask.tif")) as error:
        fetch(archive, tmp_path)
    assert str(archive) in str(error.value)


def test_folder_missing_mask_names_the_file(tmp_path, source):
    patient = patients_of(source)[0]
    (source / patient / f"{patient}_2_mask.tif").unlink()

    with pytest.raises(DataError, match=re.escape(str(source / patient / f"{patient}_2_mask.tif"))):
        fetch(source, tmp_path)


def test_wrong_size_mask_names_the_source_file(tmp_path, source):
    patient = patients_of(source)[2]
    mask = source / patient / f"{patient}_3_mask.tif"
    tifffile.imwrite(mask, np.zeros((SIZE - 4, SIZE), dtype=np.uint8), photometric="minisblack")

    with pytest.raises(DataError, match=r"28x32 but its image is 32x32") as error:
        fetch(source, tmp_path)
    assert str(error.value).startswith(str(mask))


def test_failed_fetch_leaves_no_dest_and_no_manifest(tmp_path, source):
    patient = patients_of(source)[-1]
    corrupt = source / patient / f"{patient}_4.tif"
    corrupt.write_bytes(b"not a tif")

    with pytest.raises(DataError, match="not a readable TIF") as error:
        fetch(source, tmp_path)

    assert str(error.value).startswith(str(corrupt))
    assert not (tmp_path / "raw" / "kaggle_3m").exists()
    assert not (tmp_path / "raw" / "manifest.csv").exists()
    assert list((tmp_path / "raw").iterdir()) == []  # no temporary leftovers


def test_failed_fetch_keeps_the_previous_good_dest(tmp_path, source):
    good = fetch(source, tmp_path, patients=2)
    dest = tmp_path / "raw" / "kaggle_3m"
    before = {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert len(before) == 2 * SLICES * 2
    manifest_before = (tmp_path / "raw" / "manifest.csv").read_bytes()
    patient = patients_of(source)[0]
    tifffile.imwrite(source / patient / f"{patient}_5_mask.tif", np.zeros((SIZE, SIZE, 3), np.uint8))

    with pytest.raises(DataError, match="single-channel"):
        fetch(source, tmp_path)

    assert {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()} == before
    assert (tmp_path / "raw" / "manifest.csv").read_bytes() == manifest_before
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["kaggle_3m", "manifest.csv"]
    assert len(good) == 2 * SLICES


def test_kaggle_without_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "kaggle", None)  # makes the package unimportable

    with pytest.raises(DataError, match="pip install kaggle"):
        fetch("kaggle", tmp_path)
    assert not (tmp_path / "raw" / "kaggle_3m").exists()


def test_kaggle_without_credentials(tmp_path, monkeypatch):
    # A stand-in package that fails if imported: credentials must be checked before importing.
    fake = tmp_path / "site" / "kaggle"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise RuntimeError('imported before checking credentials')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "kaggle", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ["KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR", "XDG_CONFIG_HOME"]:
        monkeypatch.delenv(name, raising=False)

    with pytest.raises(DataError, match=r"kaggle\.json.*KAGGLE_USERNAME and KAGGLE_KEY") as error:
        fetch("kaggle", tmp_path)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "raw" / "kaggle_3m").exists()
    assert not (tmp_path / "raw" / "manifest.csv").exists()


def test_the_download_stage_reports_and_counts_every_repair_and_skip(source, tmp_path, monkeypatch, capsys):
    from glioseg.config.schema import parse_params
    from glioseg.pipeline.stages import download

    patient = patients_of(source)[0]
    mask = source / patient / f"{patient}_1_mask.tif"
    values = tifffile.imread(mask)
    values[values > 0] = 128
    values[0, 0], values[5, 5] = 7, 128
    tifffile.imwrite(mask, values)
    (source / patient / "notes.txt").write_text("scanner notes")
    monkeypatch.chdir(tmp_path)
    summary = download.run(parse_params({"data": {"source": str(source)}}))
    assert (summary["patients"], summary["repaired"], summary["skipped"]) == (PATIENTS, 1, 3)
    warnings = capsys.readouterr().err.splitlines()
    assert (
        f"warning: {source / 'README.md'}: not a <patient>/<patient>_<n>[_mask].tif slice of kaggle_3m; skipped"
        in warnings
    )
    assert (
        f"warning: {source / patient / 'notes.txt'}: not a <patient>/<patient>_<n>[_mask].tif slice of "
        "kaggle_3m; skipped" in warnings
    )
    assert any(
        line.startswith("warning: ")
        and f"{patient}_1_mask.tif: mask values other than 0 and 255 (7, 128); every nonzero pixel is taken as tumour"
        in line
        for line in warnings
    )
    assert "data/raw" not in "".join(warnings), "warnings name the source, not the staging copy"


def test_zip_files_beside_the_slices_are_skipped_with_a_warning(source, tmp_path):
    from glioseg.errors import SkippedInput

    archive = make_zip(tmp_path / "lgg.zip", source, ["kaggle_3m"])
    with pytest.warns(SkippedInput) as caught:
        fetch(archive, tmp_path)
    assert sorted(str(w.message) for w in caught) == [
        f"{archive}:kaggle_3m/{name}: not a <patient>_<n>[_mask].tif slice; skipped"
        for name in ("README.md", "data.csv")
    ]


def download_summary(params: dict, tmp_path: Path, monkeypatch, capsys) -> tuple[dict, list[str]]:
    """The download stage's summary and its ``warning:`` lines, run in ``tmp_path``."""
    from glioseg.config.schema import parse_params
    from glioseg.pipeline.stages import download

    monkeypatch.chdir(tmp_path)
    summary = download.run(parse_params(params))
    return summary, [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]


def add_members(archive: Path, names: list[str], data: bytes = b"x") -> None:
    with zipfile.ZipFile(archive, "a") as z:
        for name in names:  # ZipInfo keeps the name as given (ZipFile.write would normalise it)
            z.writestr(zipfile.ZipInfo(name), data)


def test_zip_members_outside_the_layout_are_reported_and_counted(source, tmp_path, monkeypatch, capsys):
    patient = patients_of(source)[0]
    archive = make_zip(tmp_path / "lgg.zip", source, ["kaggle_3m", "lgg-mri-segmentation/kaggle_3m"])
    unsafe = [
        f"../kaggle_3m/{patient}/{patient}_1.tif",
        f"/abs/kaggle_3m/{patient}/{patient}_1.tif",
        f"kaggle_3m/{patient}/../{patient}_9.tif",
    ]
    outside = ["notes/readme.txt", "LICENSE"]
    add_members(archive, [*unsafe, *outside, f"kaggle_3m/{patient}/extra/{patient}_1.tif"])

    summary, warnings = download_summary({"data": {"source": str(archive)}}, tmp_path, monkeypatch, capsys)

    assert (summary["patients"], summary["pairs"]) == (PATIENTS, PATIENTS * SLICES)
    assert sorted(warnings) == sorted(
        [
            *(f"warning: {archive}:{member}: an absolute path or one with '..'; skipped" for member in unsafe),
            *(
                f"warning: {archive}:{member}: outside kaggle_3m/, the kaggle_3m folder read; skipped"
                for member in outside
            ),
            *(
                f"warning: {archive}:kaggle_3m/{name}: not a <patient>_<n>[_mask].tif slice; skipped"
                for name in ("README.md", "data.csv", f"{patient}/extra/{patient}_1.tif")
            ),
        ]
    ), "the duplicate lgg-mri-segmentation/kaggle_3m is left out without a warning per member"
    assert summary["skipped"] == len(warnings)


def test_zip_layout_reached_through_dotdot_is_not_read(source, tmp_path):
    from glioseg.errors import SkippedInput

    archive = tmp_path / "lgg.zip"
    files = sorted(source.rglob("*.tif"))
    with zipfile.ZipFile(archive, "w") as z:
        for file in files:
            z.writestr(zipfile.ZipInfo(f"../kaggle_3m/{file.relative_to(source).as_posix()}"), file.read_bytes())

    with pytest.warns(SkippedInput) as caught, pytest.raises(DataError, match=r"no kaggle_3m/<patient>"):
        fetch(archive, tmp_path)
    assert len(caught) == len(files)


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_brats_stray_file_in_a_case_folder_is_reported_and_counted(tmp_path, monkeypatch, capsys, kind):
    from glioseg.formats.brats import BratsParams
    from glioseg.formats.synthetic.brats import generate_brats

    cases = tmp_path / "cases"
    generate_brats(cases, 2, 12, 32, seed=5, suffixes=dict(BratsParams().suffixes))
    first = sorted(cases.iterdir())[0]
    (first / "notes.txt").write_text("scanner notes")
    (first / f"{first.name}_brainmask.nii.gz").write_bytes(b"not asked for")
    (first / ".DS_Store").write_bytes(b"hidden")
    stray = [first / "notes.txt", first / f"{first.name}_brainmask.nii.gz"]
    source = cases
    if kind == "zip":
        source = tmp_path / "cases.zip"
        with zipfile.ZipFile(source, "w") as z:
            for path in sorted(cases.rglob("*")):
                z.write(path, f"Training/{path.relative_to(cases).as_posix()}")
        stray = [f"{source}:Training/{first.name}/{path.name}" for path in stray]

    params = {"dataset": "brats", "data": {"source": str(source)}}
    summary, warnings = download_summary(params, tmp_path, monkeypatch, capsys)

    assert summary["cases"] == 2
    assert sorted(warnings) == sorted(
        f"warning: {path}: not a <case>_<suffix>.nii[.gz] volume of data.brats.suffixes; skipped" for path in stray
    )
    assert summary["skipped"] == 2
