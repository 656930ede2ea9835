"""BraTS NIfTI cases: loader (orientation, modalities, label map, errors), download, write-back."""

from __future__ import annotations

import gzip
import shutil
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from glioseg.config.schema import parse_params
from glioseg.errors import DataError, RepairedInput, SkippedInput
from glioseg.formats import FORMATS, brats, nifti
from glioseg.formats.brats import BratsParams
from glioseg.formats.synthetic.brats import generate_brats

fetch_brats = FORMATS["brats"].fetch

PARAMS = BratsParams()
SUFFIXES = dict(PARAMS.suffixes)
BRATS_2015 = {0: 0, 1: 1, 2: 2, 3: 1, 4: 3}


@pytest.fixture
def cases(tmp_path) -> Path:
    root = tmp_path / "cases"
    generate_brats(root, 2, 12, 32, seed=5, suffixes=SUFFIXES)
    return root


def case(root: Path, index: int = 0) -> Path:
    return brats.list_cases(root)[index]


def volume_file(folder: Path, suffix: str) -> Path:
    return folder / f"{folder.name}_{suffix}.nii.gz"


def resave(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, affine), path)


def test_phantom_labels_are_nested_brats_2020_values(cases):
    folder = case(cases)
    labels = np.asarray(nib.load(volume_file(folder, "seg")).dataobj)
    assert set(np.unique(labels)) == {0, 1, 2, 4}
    image = nib.load(volume_file(folder, "flair"))
    assert image.shape == (32, 32, 12) and image.get_data_dtype() == np.int16
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
    assert image.header.get_zooms() == pytest.approx((7.5, 7.5, 155 / 12))


def test_read_case_gives_axial_uint8_slices_and_mapped_classes(cases):
    slices = brats.read_case(case(cases), PARAMS)
    assert slices.images.shape == (12, 32, 32, 2) and slices.images.dtype == np.uint8
    assert slices.labels.shape == (12, 32, 32)
    raw = np.asarray(nib.load(volume_file(case(cases), "seg")).dataobj)
    counts = np.bincount(slices.labels.ravel(), minlength=4)
    assert counts.tolist() == [(raw == 0).sum(), (raw == 1).sum(), (raw == 2).sum(), (raw == 4).sum()]
    assert slices.images[slices.labels == 0].min() == 0 and slices.images.max() == 255


def test_orientation_is_canonical_whatever_the_storage_order(cases, tmp_path):
    folder = case(cases)
    reference = brats.read_case(folder, PARAMS)
    # Store every volume as RAS with the axes permuted to (Z, X, Y): same anatomy, other voxel order.
    moved = tmp_path / "moved" / folder.name
    moved.mkdir(parents=True)
    for suffix in ("t1ce", "flair", "seg"):
        image = nib.load(volume_file(folder, suffix))
        canonical = nib.as_closest_canonical(image)
        data = np.transpose(np.asarray(canonical.dataobj), (2, 0, 1))
        affine = canonical.affine[:, [2, 0, 1, 3]]
        resave(volume_file(moved, suffix), data, affine)
    again = brats.read_case(moved, PARAMS)
    np.testing.assert_array_equal(again.images, reference.images)
    np.testing.assert_array_equal(again.labels, reference.labels)
    assert brats.validate_case(moved, PARAMS) == (12, [])


def test_slices_show_anterior_at_the_top():
    volume = np.zeros((4, 6, 2))
    volume[:, -1, :] = 1  # the most anterior row (largest y in RAS)
    slices = nifti.volume_to_slices(volume)
    assert slices.shape == (2, 6, 4)
    assert slices[0, 0].tolist() == [1, 1, 1, 1] and slices[0, 1:].sum() == 0
    np.testing.assert_array_equal(nifti.slices_to_volume(slices), volume)


def test_modalities_are_chosen_and_ordered_by_params(cases):
    both = brats.read_case(case(cases), PARAMS)
    flipped = brats.read_case(case(cases), BratsParams(modalities=("flair", "t1ce")))
    np.testing.assert_array_equal(flipped.images[..., 0], both.images[..., 1])
    np.testing.assert_array_equal(flipped.images[..., 1], both.images[..., 0])
    three = brats.read_case(case(cases), BratsParams(modalities=("t1", "t2", "flair")))
    assert three.images.shape[-1] == 3


def test_label_map_turns_brats_2015_labels_into_classes(tmp_path):
    labels = np.array([0, 1, 2, 3, 4, 4, 3], dtype=np.float32)
    mapped = brats.map_labels(labels, BRATS_2015, tmp_path / "x_seg.nii.gz")
    assert mapped.tolist() == [0, 1, 2, 1, 3, 3, 1]
    assert brats.source_labels(BRATS_2015).tolist() == [0, 1, 2, 4]


def test_label_outside_the_map_is_an_error_naming_the_file(cases):
    folder = case(cases)
    seg = volume_file(folder, "seg")
    image = nib.load(seg)
    data = np.asarray(image.dataobj).copy()
    data[0, 0, 0] = 3
    resave(seg, data, image.affine)
    expected = r"_seg\.nii\.gz: label value 3 is not in data.brats.label_map \(keys 0, 1, 2, 4\)"
    with pytest.raises(DataError, match=expected):
        brats.read_case(folder, PARAMS)
    with pytest.raises(DataError, match="label value 3"):
        brats.validate_case(folder, PARAMS)


def test_missing_modality_names_case_and_file(cases):
    folder = case(cases)
    volume_file(folder, "flair").unlink()
    with pytest.raises(DataError, match=rf"case {folder.name} has no flair volume \({folder.name}_flair.nii.gz\)"):
        brats.read_case(folder, PARAMS)


def test_shape_and_affine_mismatch_are_errors_naming_the_file(cases):
    folder = case(cases)
    flair = volume_file(folder, "flair")
    image = nib.load(flair)
    data = np.asarray(image.dataobj)
    resave(flair, data[:, :, :10], image.affine)
    with pytest.raises(DataError, match=r"_flair\.nii\.gz: shape \(32, 32, 10\) differs"):
        brats.read_case(folder, PARAMS)
    shifted = image.affine.copy()
    shifted[0, 3] += 5
    resave(flair, data, shifted)
    with pytest.raises(DataError, match=r"_flair\.nii\.gz: affine differs"):
        brats.validate_case(folder, PARAMS)


def test_corrupt_and_non_3d_files_are_errors_naming_the_file(cases):
    folder = case(cases)
    flair = volume_file(folder, "flair")
    flair.write_bytes(gzip.compress(b"not a nifti header" * 30))
    with pytest.raises(DataError, match=r"_flair\.nii\.gz: not a readable NIfTI file"):
        brats.read_case(folder, PARAMS)
    resave(flair, np.zeros((4, 4, 4, 2), np.int16), np.eye(4))
    with pytest.raises(DataError, match=r"_flair\.nii\.gz: expected a 3-D volume"):
        brats.read_case(folder, PARAMS)


def test_prediction_written_back_has_the_input_affine_shape_and_values(cases, tmp_path):
    folder = case(cases)
    reference = nib.load(volume_file(folder, "flair"))
    classes = brats.read_case(folder, PARAMS).labels
    source_labels = brats.source_labels(PARAMS.label_map)[classes]
    written = nifti.write_label_volume(source_labels, reference, tmp_path / "pred.nii.gz")
    loaded = nib.load(tmp_path / "pred.nii.gz")
    assert loaded.shape == reference.shape and written.shape == reference.shape
    np.testing.assert_allclose(loaded.affine, reference.affine)
    assert nib.aff2axcodes(loaded.affine) == ("L", "P", "S")
    np.testing.assert_array_equal(np.asarray(loaded.dataobj), np.asarray(nib.load(volume_file(folder, "seg")).dataobj))


def test_fetch_synthetic_lists_one_row_per_slice_in_range(tmp_path):
    params = BratsParams(slice_range=(2, 10))
    synthetic = parse_params({"data": {"synthetic": {"patients": 3, "slices": 12, "size": 32}}}).data.synthetic
    manifest = fetch_brats(
        "synthetic", tmp_path / "brats", tmp_path / "manifest.csv", patients=2, synthetic=synthetic, settings=params
    )
    assert manifest["patient"].nunique() == 2 and len(manifest) == 2 * 8
    assert manifest["slice"].tolist()[:3] == [2, 3, 4]
    folder = tmp_path / "brats" / manifest["patient"][0]
    assert sorted(p.name.split("_")[-1] for p in folder.iterdir()) == ["flair.nii.gz", "seg.nii.gz", "t1ce.nii.gz"]
    assert (tmp_path / "manifest.csv").is_file()


def test_fetch_copies_only_wanted_files_from_a_folder_or_zip(cases, tmp_path):
    synthetic = parse_params({}).data.synthetic
    from_folder = fetch_brats(
        str(cases), tmp_path / "a", tmp_path / "a.csv", patients=None, synthetic=synthetic, settings=PARAMS
    )
    archive = tmp_path / "cases.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in cases.rglob("*.nii.gz"):
            handle.write(path, f"Training/{path.relative_to(cases)}")
    from_zip = fetch_brats(
        str(archive), tmp_path / "b", tmp_path / "b.csv", patients=1, synthetic=synthetic, settings=PARAMS
    )
    assert len(from_folder) == 24 and len(from_zip) == 12
    assert len(list((tmp_path / "a").rglob("*.nii.gz"))) == 2 * 3
    assert from_zip["image_sha256"][0] == from_folder["image_sha256"][0]


def test_zip_members_that_would_escape_data_raw_are_skipped_with_a_warning(cases, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    first = case(cases, 1)
    archive = tmp_path / "hostile.zip"
    hostile = [
        "../escaped/escaped_t1ce.nii.gz",
        "../.._t1ce.nii.gz",
        f"{tmp_path}/abs/abs_flair.nii.gz",
        "Training/x/../../../up/up_seg.nii.gz",
    ]
    with zipfile.ZipFile(archive, "w") as handle:
        for path in first.glob("*.nii.gz"):
            handle.write(path, f"Training/{first.name}/{path.name}")
        for name in hostile:  # ZipInfo keeps the name as given (ZipFile.write would normalise it)
            handle.writestr(zipfile.ZipInfo(name), volume_file(first, "t1ce").read_bytes())
    with pytest.warns(SkippedInput) as caught:
        manifest = fetch_brats(
            str(archive),
            work / "data/raw/brats",
            work / "data/raw/manifest.csv",
            patients=None,
            synthetic=parse_params({}).data.synthetic,
            settings=PARAMS,
        )
    assert set(manifest["patient"]) == {first.name}
    written = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(cases) and p != archive]
    assert all(p.is_relative_to(work / "data/raw") for p in written), written
    assert sorted(p.name for p in (work / "data/raw/brats").rglob("*.nii.gz")) == sorted(
        f"{first.name}_{suffix}.nii.gz" for suffix in ("t1ce", "flair", "seg")
    )
    warnings = [str(w.message) for w in caught]
    assert len(warnings) == len(hostile)
    for name in hostile:
        assert any(f":{name}: an absolute path or one with '..'; skipped" in warning for warning in warnings)


def test_non_finite_voxels_are_read_as_background_and_reported(cases, tmp_path):
    folder = case(cases, 0)
    path = volume_file(folder, "flair")
    image = nib.load(path)
    data = np.asarray(image.dataobj, dtype=np.float32)
    data[0, 0, :3] = [np.nan, np.inf, -np.inf]
    nib.save(nib.Nifti1Image(data, image.affine), path)
    with pytest.warns(RepairedInput, match=r"_flair\.nii\.gz: 3 non-finite voxels \(NaN or infinite\) read as"):
        fetch_brats(
            str(cases),
            tmp_path / "raw",
            tmp_path / "m.csv",
            patients=None,
            synthetic=parse_params({}).data.synthetic,
            settings=PARAMS,
        )
    read = brats.read_case(tmp_path / "raw" / folder.name, PARAMS)
    assert np.isfinite(read.images).all() and read.images.dtype == np.uint8


def test_fetch_error_leaves_nothing_behind(cases, tmp_path):
    volume_file(case(cases, 1), "t1ce").unlink()
    synthetic = parse_params({}).data.synthetic
    with pytest.raises(DataError, match=rf"{cases}/{case(cases, 1).name}: case .* has no t1ce volume"):
        fetch_brats(
            str(cases), tmp_path / "out", tmp_path / "m.csv", patients=None, synthetic=synthetic, settings=PARAMS
        )
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.csv").exists()


def test_slice_range_beyond_the_volume_is_an_error(cases, tmp_path):
    synthetic = parse_params({}).data.synthetic
    with pytest.raises(DataError, match="slice_range starts at 60 but the case has 12 slices"):
        fetch_brats(
            str(cases),
            tmp_path / "out",
            tmp_path / "m.csv",
            patients=1,
            synthetic=synthetic,
            settings=BratsParams(slice_range=(60, 135)),
        )


def test_params_derive_model_channels_and_reject_bad_brats_keys():
    params = parse_params({"dataset": "brats", "data": {"brats": {"modalities": ["t1", "t2", "flair"]}}})
    assert (params.model.in_channels, params.model.classes) == (3, 4)
    assert list(params.regions()) == ["whole_tumour", "tumour_core", "enhancing_tumour"]
    from glioseg.errors import ConfigError

    with pytest.raises(ConfigError, match="model.classes is 1 but dataset 'brats' needs 4"):
        parse_params({"dataset": "brats", "model": {"classes": 1}})
    with pytest.raises(ConfigError, match="no file suffix for t2w"):
        parse_params({"data": {"brats": {"modalities": ["t2w"]}}})
    with pytest.raises(ConfigError, match="region 'core' must list tumour classes 1..3"):
        parse_params({"data": {"brats": {"regions": {"core": [0, 1]}}}})


def test_synthetic_rejects_modalities_it_cannot_render(tmp_path):
    params = BratsParams(modalities=("t1n",), suffixes={"t1n": "t1n", "seg": "seg"})
    synthetic = parse_params({}).data.synthetic
    with pytest.raises(DataError, match="synthetic phantoms have t1, t1ce, t2, flair, not t1n"):
        fetch_brats("synthetic", tmp_path / "o", tmp_path / "m.csv", patients=1, synthetic=synthetic, settings=params)


def test_brats_2023_suffixes_are_read(cases, tmp_path):
    renamed = tmp_path / "renamed" / case(cases).name
    renamed.mkdir(parents=True)
    for old, new in (("t1ce", "t1c"), ("flair", "t2f"), ("seg", "seg")):
        shutil.copy(volume_file(case(cases), old), volume_file(renamed, new))
    params = BratsParams(modalities=("t1c", "t2f"), suffixes={"t1c": "t1c", "t2f": "t2f", "seg": "seg"})
    np.testing.assert_array_equal(brats.read_case(renamed, params).images, brats.read_case(case(cases), PARAMS).images)
