import pandas as pd
import pytest

from glioseg.config import SplitParams
from glioseg.data.split import deal, split_slices, subset_sizes
from glioseg.errors import DataError


def make_labels(patients: int, slices: int = 10) -> pd.DataFrame:
    rows = []
    for p in range(patients):
        for s in range(1, slices + 1):
            # patient p has p % 5 positive slices; slice 1 of every patient is removed
            rows.append({"patient": f"P{p:03d}", "slice": s, "diagnosis": int(s <= p % 5 + 1 and s > 1),
                         "kept": int(s != 1)})
    return pd.DataFrame(rows)


def test_subset_sizes_follow_fractions_exactly():
    assert subset_sizes(85, {"train": 0.72, "val": 0.08, "test": 0.2}) == {"train": 61, "val": 7, "test": 17}
    assert subset_sizes(10, {"train": 0.72, "val": 0.08, "test": 0.2}) == {"train": 7, "val": 1, "test": 2}
    with pytest.raises(DataError):
        subset_sizes(2, {"train": 0.72, "val": 0.08, "test": 0.2})


def test_deal_spreads_subsets_and_meets_quota():
    order = deal(10, {"train": 7, "val": 1, "test": 2})
    assert sorted(order) == sorted(["train"] * 7 + ["val"] + ["test"] * 2)
    assert order[:5].count("test") == 1  # spread out, not bunched at the end


def test_patient_split_is_disjoint_seeded_and_complete():
    labels = make_labels(50)
    split = split_slices(labels, SplitParams(), seed=1)
    assert len(split) == int(labels["kept"].sum()) == 450
    per_patient = split.groupby("patient")["subset"].nunique()
    assert (per_patient == 1).all()  # no patient crosses subsets
    patients = split.drop_duplicates("patient")["subset"].value_counts().to_dict()
    assert patients == {"train": 36, "val": 4, "test": 10}
    assert split.equals(split_slices(labels, SplitParams(), seed=1))
    assert not split.equals(split_slices(labels, SplitParams(), seed=2))


def test_patient_split_is_stratified_by_burden():
    labels = make_labels(50)
    split = split_slices(labels, SplitParams(), seed=3)
    burden = split.groupby("patient").agg(subset=("subset", "first"), burden=("diagnosis", "mean"))
    means = burden.groupby("subset")["burden"].mean()
    assert abs(means["train"] - means["test"]) < 0.05


def test_slice_split_mixes_patients():
    split = split_slices(make_labels(20), SplitParams(by="slice"), seed=0)
    assert (split.groupby("patient")["subset"].nunique() > 1).any()
    assert split["subset"].value_counts()["test"] == 36  # 20% of 180 kept slices


def test_nothing_kept_is_an_error():
    labels = make_labels(3).assign(kept=0)
    with pytest.raises(DataError, match="no kept slices"):
        split_slices(labels, SplitParams(), seed=0)


def test_five_folds_partition_the_patients():
    labels = make_labels(50)
    tests = []
    for fold in range(5):
        split = split_slices(labels, SplitParams(folds=5, fold=fold), seed=4)
        assert (split.groupby("patient")["subset"].nunique() == 1).all()
        patients = split.drop_duplicates("patient")
        tests.append(set(patients.loc[patients["subset"] == "test", "patient"]))
        assert patients["subset"].value_counts().to_dict() == {"train": 36, "test": 10, "val": 4}
    assert set().union(*tests) == set(labels["patient"])  # every patient is tested exactly once
    assert sum(len(t) for t in tests) == 50


def test_fold_params_are_checked():
    from glioseg.config import parse_params
    from glioseg.errors import ConfigError

    with pytest.raises(ConfigError, match="split.fold must be below"):
        parse_params({"split": {"folds": 5, "fold": 5}})
    with pytest.raises(ConfigError, match="split.folds must be 0"):
        parse_params({"split": {"folds": 1}})
