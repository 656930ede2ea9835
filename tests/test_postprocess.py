"""Largest-connected-component post-processing on known volumes."""

import numpy as np

from glioseg.inference.postprocess import keep_largest_component, postprocess_case, postprocess_cases


def test_only_the_largest_component_of_a_volume_stays_with_its_classes():
    labels = np.zeros((3, 8, 8), np.uint8)
    labels[0:3, 2:5, 2:5] = 2  # 27 voxels across three slices...
    labels[1, 3, 3] = 3  # ...with another class inside
    labels[2, 7, 7] = 1  # a 1-voxel speck on the last slice
    labels[0, 0, 6:8] = 1  # a 2-voxel speck on the first
    kept = keep_largest_component(labels)
    assert kept.dtype == np.uint8
    assert (kept > 0).sum() == 27 and kept[1, 3, 3] == 3 and kept[2, 7, 7] == 0 and kept[0, 0, 6:8].sum() == 0
    diagonal = np.zeros((2, 4, 4), np.uint8)
    diagonal[0, 0, 0] = diagonal[1, 1, 1] = 1  # corners only: two components, equal size, the first wins
    assert keep_largest_component(diagonal).sum() == 1 and keep_largest_component(diagonal)[0, 0, 0] == 1


def test_empty_and_single_component_volumes_are_unchanged():
    empty = np.zeros((2, 4, 4), np.uint8)
    assert not keep_largest_component(empty).any()
    single = empty.copy()
    single[:, 1:3, 1:3] = 1
    np.testing.assert_array_equal(keep_largest_component(single), single)
    np.testing.assert_array_equal(postprocess_case(single, "none"), single)


def test_cases_are_stacked_by_slice_order_and_processed_separately():
    labels = np.zeros((5, 6, 6), np.uint8)
    cases = np.array(["a", "b", "a", "a", "b"])
    order = np.array([2, 0, 0, 1, 1])
    for row in (0, 2, 3):  # case a: a 2x2 column through slices 0, 1, 2 (rows 2, 3, 0)
        labels[row, 1:3, 1:3] = 1
    labels[0, 5, 5] = 1  # case a: a speck on slice 2
    labels[1, 0, 0] = 1  # case b: one voxel on slice 0 and, not touching it,
    labels[4, 4:6, 4:6] = 1  # 4 voxels on slice 1 (smaller than case a's speck-free column)
    out = postprocess_cases(labels, cases, order, "largest_component")
    assert out[0, 5, 5] == 0 and out[[0, 2, 3]][:, 1:3, 1:3].all()
    assert out[1, 0, 0] == 0 and out[4].sum() == 4  # case b keeps its own largest component
    np.testing.assert_array_equal(postprocess_cases(labels, cases, order, "none"), labels)
