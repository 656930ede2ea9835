import numpy as np

from glioseg.config.sections import AugmentParams
from glioseg.data.transforms import build_pipelines
from glioseg.pipeline.stages.augment import preview
from glioseg.pipeline.stages.train import overlay_rows
from tests.conftest import square_slices


def test_overlay_rows_are_the_slices_with_most_tumour():
    arrays = square_slices(9, 32, seed=0)
    tumour = arrays.masks.reshape(9, -1).sum(axis=1)
    rows = overlay_rows(arrays, 3)
    assert sorted(tumour[rows].tolist(), reverse=True) == sorted(tumour.tolist(), reverse=True)[:3]
    assert (tumour[rows] > 0).all()


def test_preview_shows_each_slice_and_its_augmented_copy():
    arrays = square_slices(3, 32, seed=2)
    pipeline = build_pipelines(AugmentParams(image_size=32, hflip=1.0, vflip=0.0, rotate90=0.0), arrays.images)
    panels = preview(pipeline["train"], arrays.images, arrays.masks, seed=0)
    assert len(panels) == 12 and all(p.shape == (32, 32, 3) and p.dtype == np.uint8 for p in panels)
    mask, augmented_mask = panels[1][..., 0], panels[3][..., 0]
    np.testing.assert_array_equal(augmented_mask, mask[:, ::-1])  # horizontal flip with p=1
    assert set(np.unique(mask)) <= {0, 255}
