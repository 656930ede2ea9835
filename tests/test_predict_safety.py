"""What glioseg predict must never do to a user's files, and the one-line errors it gives instead."""

import errno
import json
import os
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch

from glioseg.errors import DataError, InputWarning
from glioseg.formats import FORMATS
from glioseg.formats import nifti as nifti_io
from glioseg.inference.owned_output import MANIFEST, REPLACED_PREFIX, STAGING_PREFIX, owned_files
from glioseg.inference.scans import predict
from tests.conftest import write_slice

A, B = "TCGA_AA_0001_20000101", "TCGA_BB_0002_20000101"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    from tests.conftest import train_tiny_model

    return train_tiny_model(tmp_path_factory.mktemp("model") / "model.pt", epochs=1)


@pytest.fixture
def scans(tmp_path) -> Path:
    """A kaggle_3m folder of two patients, two slices each, with their truth masks."""
    root = tmp_path / "kaggle_3m"
    for patient in (A, B):
        for n in (1, 2):
            write_slice(root, patient, n, 90 + 40 * n, two_tone=True)
    return root


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (symlinks as their targets' names), for 'left as it was' checks."""
    return {
        str(p.relative_to(folder)): os.readlink(p).encode() if p.is_symlink() else p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() or p.is_symlink()
    }


def no_staging(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith((STAGING_PREFIX, REPLACED_PREFIX))]


find_scans = FORMATS["lgg"].find_scans


# 1. predict removes no file it did not write in the same run, and replaces only its own


def test_cases_predicted_one_after_another_into_one_folder_accumulate(model_file, scans, tmp_path):
    out = tmp_path / "out"
    predict(scans / A, model_file, out, "cpu")
    first = snapshot(out / A)
    predict(scans / B, model_file, out, "cpu")
    assert snapshot(out / A) == first  # A's prediction stays
    assert sorted(p.name for p in out.rglob("*_mask.tif")) == [f"{p}_{n}_mask.tif" for p in (A, B) for n in (1, 2)]
    owned = owned_files(out)
    assert {f"{p}/{p}_{n}_mask.tif" for p in (A, B) for n in (1, 2)} <= set(owned)
    predict(scans / A, model_file, out, "cpu", {"threshold": 0.9})  # rewriting its own files needs no --overwrite
    assert set(owned_files(out)) == set(owned) and no_staging(out)


def test_a_users_file_with_a_predict_name_is_not_replaced_without_overwrite(model_file, scans, tmp_path):
    out = tmp_path / "out"
    predict(scans / A, model_file, out, "cpu")
    (out / B).mkdir()
    (out / B / f"{B}_1_mask.tif").write_bytes(b"the user's own mask")
    before = snapshot(out)
    with pytest.raises(DataError) as raised:
        predict(scans / B, model_file, out, "cpu")
    message = str(raised.value)
    assert f"{B}_1_mask.tif exists and predict did not write it" in message and "--overwrite" in message
    assert "\n" not in message
    assert snapshot(out) == before and no_staging(out)
    predict(scans / B, model_file, out, "cpu", overwrite=True)
    assert tifffile.imread(out / B / f"{B}_1_mask.tif").shape == (32, 32)


def test_an_inputs_truth_masks_are_never_replaced_even_with_overwrite(model_file, scans):
    before = snapshot(scans)
    for source in (scans / A, scans / A / f"{A}_1.tif", scans):
        with pytest.raises(DataError) as raised:
            predict(source, model_file, scans, "cpu", overwrite=True)
        message = str(raised.value)
        assert "_mask.tif" in message and "prediction and truth must not share a name in one folder" in message
        assert snapshot(scans) == before and no_staging(scans)
    assert not (scans / MANIFEST).exists()

    # A manifest that lists A's truth masks (as an earlier version recorded them) changes nothing:
    # predicting B there neither removes A's masks nor writes over B's.
    (scans / MANIFEST).write_text(json.dumps({"files": [f"{A}/{A}_{n}_mask.tif" for n in (1, 2)]}))
    before = snapshot(scans)
    with pytest.raises(DataError, match=f"{B}_1_mask.tif"):
        predict(scans / B, model_file, scans, "cpu")
    assert snapshot(scans) == before


def test_predict_never_follows_a_symlink_out_of_the_folder(model_file, scans, tmp_path):
    out = tmp_path / "out"
    predict(scans / A, model_file, out, "cpu")
    # The user moves A's prediction elsewhere and leaves a link: predicting B must not empty it.
    elsewhere = tmp_path / "mine"
    elsewhere.mkdir()
    (out / A).rename(elsewhere / A)
    (out / A).symlink_to(elsewhere / A)
    kept = snapshot(elsewhere)
    predict(scans / B, model_file, out, "cpu")
    assert snapshot(elsewhere) == kept

    # Writing A again would go through the link: refused, naming it, nothing changed.
    before = snapshot(out)
    with pytest.raises(DataError, match=rf"{out / A} is a symlink to {elsewhere / A}, outside the folder"):
        predict(scans / A, model_file, out, "cpu", overwrite=True)
    assert snapshot(out) == before and snapshot(elsewhere) == kept and no_staging(out)

    # A linked file is refused just the same.
    (out / A).unlink()
    (elsewhere / "table.csv").write_text("the user's table")
    (out / "areas.csv").unlink()
    (out / "areas.csv").symlink_to(elsewhere / "table.csv")
    with pytest.raises(DataError, match=rf"{out / 'areas.csv'} is a symlink to .*table.csv, outside the folder"):
        predict(scans / A, model_file, out, "cpu", overwrite=True)
    assert (elsewhere / "table.csv").read_text() == "the user's table" and (out / "areas.csv").is_symlink()


# 2. a folder of both slices and patient folders is ambiguous


def test_a_stray_slice_beside_patient_folders_is_refused(model_file, scans, tmp_path):
    tifffile.imwrite(scans / "stray.tif", np.zeros((32, 32, 3), np.uint8), photometric="rgb")
    with pytest.raises(DataError) as raised:
        find_scans(scans)
    message = str(raised.value)
    assert message.startswith(f"{scans}: holds both slices (stray.tif)") and "\n" not in message
    with pytest.raises(DataError, match="stray.tif"):
        predict(scans, model_file, tmp_path / "out", "cpu")
    assert not (tmp_path / "out").exists()
    assert len(find_scans(scans / A)[0].files) == 2  # a patient folder alone is still read


# 3. the output folder's own faults


def test_an_out_under_a_file_is_a_one_line_error(model_file, scans, tmp_path):
    from typer.testing import CliRunner

    from glioseg.cli import app

    afile = tmp_path / "afile"
    afile.write_text("keep")
    with pytest.raises(DataError, match=rf"--out {afile / 'sub'}: {afile} is a file"):
        predict(scans / A, model_file, afile / "sub", "cpu")
    result = CliRunner().invoke(
        app,
        [
            "predict",
            str(scans / A),
            "--model",
            str(model_file),
            "--device",
            "cpu",
            "--out",
            str(afile / "sub" / "deeper"),
        ],
    )
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"error: --out {afile / 'sub' / 'deeper'}: {afile} is a file, so it cannot hold a folder"
    ]
    assert afile.read_text() == "keep"


def test_a_full_disk_while_writing_is_one_line_and_leaves_the_folder_as_it_was(
    model_file, scans, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    predict(scans / A, model_file, out, "cpu")
    before = snapshot(out)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(tifffile, "imwrite", full)
        for target in (out, tmp_path / "new" / "deeper"):
            with pytest.raises(DataError) as raised:
                predict(scans / B, model_file, target, "cpu")
            assert str(raised.value) == (
                f"--out {target}: cannot write: no space left on device; the folder is left as it was"
            )
        assert snapshot(out) == before and no_staging(out)
        assert not (tmp_path / "new").exists()

    # The disk fills while the files are moved in (at the last data file): those already moved go
    # back, and the files they replaced are restored.
    real_replace = os.replace

    def replace_then_fail(source, target):
        if STAGING_PREFIX in str(source) and Path(target).name == "prediction.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace_then_fail)
    with pytest.raises(DataError, match=rf"^--out {out}: cannot write: no space left on device"):
        predict(scans / A, model_file, out, "cpu", {"threshold": 0.99})
    monkeypatch.setattr(os, "replace", real_replace)
    assert snapshot(out) == before and no_staging(out)
    predict(scans / A, model_file, out, "cpu", {"threshold": 0.99})
    assert snapshot(out) != before  # the run that failed did change files, which were put back


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_one_line_and_left_as_it_was(model_file, scans, tmp_path):
    out = tmp_path / "out"
    predict(scans / A, model_file, out, "cpu")
    before = snapshot(out)
    out.chmod(0o555)
    try:
        with pytest.raises(DataError, match=rf"^--out {out}: cannot write: permission denied"):
            predict(scans / B, model_file, out, "cpu")
    finally:
        out.chmod(0o755)
    assert snapshot(out) == before and no_staging(out)


# 4. model specs that name nothing usable


@pytest.mark.parametrize("spec", ["runs:/0123456789abcdef", "models:/glioseg-lgg/1", "folds:5"])
def test_a_model_from_a_missing_mlflow_store_creates_no_store(spec, scans, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    store = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    with pytest.raises(DataError) as raised:
        predict(scans / A, spec, tmp_path / "out", "cpu")
    assert str(raised.value).startswith(f"{spec}: no MLflow store at {store}") and "\n" not in str(raised.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kaggle_3m"]


@pytest.mark.parametrize("content", [[1, 2, 3], torch.zeros(3)], ids=["list", "tensor"])
def test_a_torch_file_that_is_not_a_checkpoint_is_a_one_line_error(content, scans, tmp_path):
    path = tmp_path / "model.pt"
    torch.save(content, path)
    with pytest.raises(DataError, match=rf"^{path}: not a glioseg model file"):
        predict(scans / A, path, tmp_path / "out", "cpu")
    assert not (tmp_path / "out").exists()


# 5. NIfTI orientation codes


def nifti(path: Path, qform: tuple[np.ndarray, int] | None = None, sform: tuple[np.ndarray, int] | None = None):
    """A tiny 3-D volume; without ``qform``/``sform`` its header has neither orientation code."""
    image = nib.Nifti1Image(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6), None)
    image.header.set_zooms((2.0, 3.0, 4.0))
    if qform:
        image.set_qform(*qform)
    if sform:
        image.set_sform(*sform)
    nib.save(image, path)
    return path


def test_a_nifti_without_orientation_codes_warns_and_its_prediction_keeps_them(tmp_path):
    path = nifti(tmp_path / "case_flair.nii.gz")
    with pytest.warns(InputWarning) as caught:
        reference = nifti_io.load_image(path)
    assert len(caught) == 1 and str(caught[0].message).startswith(
        f"{path}: no orientation (qform_code and sform_code are 0)"
    )
    labels = nifti_io.volume_to_slices(np.ones(reference.shape, np.uint8))
    nifti_io.write_label_volume(labels, reference, tmp_path / "pred.nii.gz")
    written = nib.load(tmp_path / "pred.nii.gz")
    assert (int(written.header["qform_code"]), int(written.header["sform_code"])) == (0, 0)
    np.testing.assert_allclose(written.affine, reference.affine)


def test_a_predictions_header_has_the_inputs_own_qform_and_sform(tmp_path):
    scanner = np.diag([-2.0, 3.0, 4.0, 1.0])
    scanner[:3, 3] = [10, -20, 30]
    aligned = scanner.copy()
    aligned[:3, 3] = [0, 0, 0]
    path = nifti(tmp_path / "case_flair.nii.gz", qform=(scanner, 1), sform=(aligned, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)  # codes given: read without a warning
        reference = nifti_io.load_image(path)
    nifti_io.write_label_volume(
        nifti_io.volume_to_slices(np.zeros(reference.shape, np.uint8)), reference, tmp_path / "pred.nii.gz"
    )
    written = nib.load(tmp_path / "pred.nii.gz")
    assert (int(written.header["qform_code"]), int(written.header["sform_code"])) == (1, 2)
    np.testing.assert_allclose(written.header.get_qform(), scanner)
    np.testing.assert_allclose(written.header.get_sform(), aligned)
