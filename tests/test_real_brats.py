"""The BraTS path on the real BRATS 2015 cases of ../shared/brats (skipped without them)."""

from pathlib import Path

import numpy as np
import pytest

from glioseg.config.schema import parse_params
from glioseg.data.clean import find_dark, measure_slices
from glioseg.data.labels import build_labels
from glioseg.data.split import split_slices
from glioseg.formats import FORMATS, brats

fetch_brats = FORMATS["brats"].fetch

SHARED_BRATS = Path(__file__).resolve().parents[1].parent / "shared" / "brats"
BRATS_2015 = {0: 0, 1: 1, 2: 2, 3: 1, 4: 3}
# Voxels per label 1/2/3/4 of BraTS2015_pat0001, from ../shared/brats/README.md.
PAT0001 = {1: 26371, 2: 53050, 3: 818, 4: 31485}

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not SHARED_BRATS.is_dir(), reason=f"real BraTS data not available at {SHARED_BRATS}"),
]


@pytest.fixture(scope="module")
def params():
    return parse_params({"dataset": "brats", "data": {"source": str(SHARED_BRATS), "brats": {"label_map": BRATS_2015}}})


@pytest.fixture(scope="module")
def fetched(tmp_path_factory, params):
    root = tmp_path_factory.mktemp("brats")
    manifest = fetch_brats(
        str(SHARED_BRATS),
        root / "brats",
        root / "manifest.csv",
        patients=None,
        synthetic=params.data.synthetic,
        settings=params.data.brats,
    )
    return root, manifest


def test_download_copies_six_cases_with_only_the_asked_files(fetched):
    root, manifest = fetched
    assert manifest["patient"].nunique() == 6 and len(manifest) == 6 * 155
    for case in (root / "brats").iterdir():
        assert sorted(p.name.removeprefix(f"{case.name}_") for p in case.iterdir()) == [
            "flair.nii.gz",
            "seg.nii.gz",
            "t1ce.nii.gz",
        ]


def test_case_shapes_and_label_counts_after_the_map(fetched, params):
    root, _ = fetched
    case = brats.read_case(root / "brats" / "BraTS2015_pat0001", params.data.brats)
    assert case.images.shape == (155, 240, 240, 2) and case.labels.shape == (155, 240, 240)
    counts = np.bincount(case.labels.ravel(), minlength=4)
    assert counts[1:].tolist() == [PAT0001[1] + PAT0001[3], PAT0001[2], PAT0001[4]]


def test_the_2020_map_refuses_the_2015_label_3(tmp_path):
    from glioseg.errors import DataError

    params = parse_params({"dataset": "brats"})
    with pytest.raises(DataError, match="BraTS2015_pat0001_seg.nii.gz: label value 3 is not in data.brats.label_map"):
        fetch_brats(
            str(SHARED_BRATS),
            tmp_path / "b",
            tmp_path / "m.csv",
            patients=1,
            synthetic=params.data.synthetic,
            settings=params.data.brats,
        )


def test_a_missing_modality_is_named(tmp_path):
    from glioseg.errors import DataError

    brats_params = {"modalities": ["t1", "flair"], "label_map": BRATS_2015}
    params = parse_params({"dataset": "brats", "data": {"brats": brats_params}})
    with pytest.raises(DataError, match=r"case BraTS2015_pat0001 has no t1 volume \(BraTS2015_pat0001_t1.nii.gz\)"):
        fetch_brats(
            str(SHARED_BRATS),
            tmp_path / "b",
            tmp_path / "m.csv",
            patients=1,
            synthetic=params.data.synthetic,
            settings=params.data.brats,
        )


def test_clean_labels_and_split_keep_each_case_in_one_subset(fetched, params):
    _, manifest = fetched
    measured = measure_slices(manifest, params)
    # The LGG default (2.0) also drops the four top slices of pat0006, where its tumour meets the
    # skull cap with little brain around it; ci/profile-brats.yaml uses 0.15, which keeps them.
    default = find_dark(measured, 2.0)
    assert len(default) == 157 and default.loc[default["diagnosis"] == 1, "slice"].tolist() == [139, 140, 141, 142]
    removed = find_dark(measured, 0.15)
    assert len(removed) == 117 and int(removed["diagnosis"].sum()) == 0
    labels = build_labels(manifest, removed, params)
    kept = labels[labels["kept"] == 1]
    pat = kept[kept["patient"] == "BraTS2015_pat0002"]
    assert int(pat["oedema_pixels"].sum()) == 53736
    split = split_slices(labels, params.split, params.seed)
    assert split.groupby("patient")["subset"].nunique().max() == 1
    assert set(split["subset"]) == {"train", "val", "test"}


def test_the_viewer_reads_a_real_case_with_its_truth_per_region(fetched, params, tmp_path):
    """The viewer's path on BraTS2015_pat0001: 155 axial slices, the README's voxel counts per region."""
    import gzip

    import nibabel as nib
    import torch

    from glioseg.app import logic
    from glioseg.data.transforms import build_pipelines, pipelines_to_dict
    from glioseg.model.checkpoint import model_payload, save_checkpoint
    from glioseg.model.network import build_model

    root, _ = fetched
    small = parse_params(
        {
            **params.model_dump(mode="json"),
            "augment": {"image_size": 32},
            "model": {"encoder": "resnet18", "encoder_depth": 3, "decoder_channels": [16, 8, 8]},
        }
    )
    folder = root / "brats" / "BraTS2015_pat0001"
    torch.manual_seed(0)
    images = brats.read_case(folder, small.data.brats, with_labels=False).images[::10]
    payload = model_payload(
        build_model(small.model),
        small.model,
        pipelines_to_dict(build_pipelines(small.augment, images)),
        small.inference,
        small.data_card(),
    )
    save_checkpoint(tmp_path / "model.pt", payload)
    result = logic.case_result(logic.load(str(tmp_path / "model.pt")), logic.load_case(folder), "cpu")
    assert len(result.slices) == 155 and result.predictions[0].shape == (240, 240)
    totals = logic.slice_table(result).sum(numeric_only=True)
    assert totals["whole_tumour_truth_pixels"] == sum(PAT0001.values())
    assert totals["tumour_core_truth_pixels"] == PAT0001[1] + PAT0001[3] + PAT0001[4]
    assert totals["enhancing_tumour_truth_pixels"] == PAT0001[4]
    volume = nib.Nifti1Image.from_bytes(gzip.decompress(logic.prediction_download(result)[0]))
    reference = nib.load(folder / "BraTS2015_pat0001_flair.nii.gz")
    assert volume.shape == reference.shape and set(np.unique(np.asarray(volume.dataobj))) <= {0, 1, 2, 4}
    np.testing.assert_allclose(volume.affine, reference.affine)
