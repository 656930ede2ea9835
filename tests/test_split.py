import pandas as pd
import pytest
from pydantic import ValidationError

from glioseg.config.schema import Params
from glioseg.config.sections import SplitParams
from glioseg.data.sites import patient_site, sites
from glioseg.data.split import deal, split_slices, subset_sizes, summarise_split
from glioseg.errors import DataError
from glioseg.formats.synthetic.lgg import generate_lgg


def make_labels(patients: int, slices: int = 10) -> pd.DataFrame:
    rows = []
    for p in range(patients):
        for s in range(1, slices + 1):
            # patient p has p % 5 positive slices; slice 1 of every patient is removed
            rows.append(
                {"patient": f"P{p:03d}", "slice": s, "diagnosis": int(s <= p % 5 + 1 and s > 1), "kept": int(s != 1)}
            )
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


def test_fewer_patients_than_folds_is_one_line_naming_the_key():
    with pytest.raises(DataError, match=r"^split.folds: 5 folds need at least 5 patients; the data has 3$"):
        split_slices(make_labels(3), SplitParams(folds=5, fold=0), seed=4)
    with pytest.raises(DataError, match=r"^split.folds: 5 folds need at least 5 patients; the data has 4$"):
        split_slices(make_labels(4), SplitParams(folds=5, fold=0, fold_is="val"), seed=4)


def test_fold_params_are_checked():
    from glioseg.config.schema import parse_params
    from glioseg.errors import ConfigError

    with pytest.raises(ConfigError, match="split.fold must be below"):
        parse_params({"split": {"folds": 5, "fold": 5}})
    with pytest.raises(ConfigError, match="split.folds must be 0"):
        parse_params({"split": {"folds": 1}})


@pytest.fixture(scope="module")
def synthetic_patients(tmp_path_factory) -> list[str]:
    """The ids of 14 generated patients: sites AA, AB, AC (four each) and AD (two)."""
    root = tmp_path_factory.mktemp("synthetic")
    generate_lgg(root, patients=14, slices=4, size=32)
    return sorted(p.name for p in root.iterdir())


def site_labels(patients: list[str]) -> pd.DataFrame:
    labels = make_labels(len(patients))
    return labels.assign(patient=labels["patient"].map(dict(zip(sorted(labels["patient"].unique()), patients))))


def test_site_folds_hold_out_one_site_each_and_test_every_patient_once(synthetic_patients):
    labels = site_labels(synthetic_patients)
    assert sites(synthetic_patients) == ["AA", "AB", "AC", "AD"]
    tested = []
    for fold, site in enumerate(["AA", "AB", "AC", "AD"]):
        split = split_slices(labels, SplitParams(by="site", fold=fold), seed=0)
        subsets = split.drop_duplicates("patient").set_index("patient")["subset"]
        test_sites = {patient_site(p) for p in subsets[subsets == "test"].index}
        other_sites = {patient_site(p) for p in subsets[subsets != "test"].index}
        assert test_sites == {site} and site not in other_sites
        assert set(subsets[subsets != "test"]) == {"train", "val"}
        assert summarise_split(split, SplitParams(by="site", fold=fold))["test_site"] == site
        tested += list(subsets[subsets == "test"].index)
    assert sorted(tested) == synthetic_patients  # every patient tested exactly once


def test_site_split_errors_name_the_key_and_the_patient(synthetic_patients):
    labels = site_labels(synthetic_patients)
    with pytest.raises(DataError, match=r"split.fold is 4, but the data has 4 sites \(AA, AB, AC, AD\)"):
        split_slices(labels, SplitParams(by="site", fold=4), seed=0)
    with pytest.raises(DataError, match="patient 'P000' is not a TCGA_<site>_<id>_<date> id"):
        split_slices(make_labels(5), SplitParams(by="site"), seed=0)
    with pytest.raises(ValidationError, match="BraTS case names carry no acquiring site"):
        Params(dataset="brats", split={"by": "site"})
    with pytest.raises(ValidationError, match="split.folds needs split.by: patient"):
        SplitParams(by="site", folds=5)


def test_validation_folds_keep_the_patient_splits_test_set_and_deal_the_rest():
    labels = make_labels(50)
    plain = split_slices(labels, SplitParams(), seed=1).drop_duplicates("patient").set_index("patient")["subset"]
    val_patients = []
    for fold in range(5):
        params = SplitParams(folds=5, fold=fold, fold_is="val")
        subsets = split_slices(labels, params, seed=1).drop_duplicates("patient").set_index("patient")["subset"]
        assert subsets[subsets == "test"].index.equals(plain[plain == "test"].index)  # the same held-out test
        val_patients += list(subsets[subsets == "val"].index)
    assert sorted(val_patients) == sorted(plain[plain != "test"].index)  # every other patient is val once
    with pytest.raises(ValidationError, match="split.fold_is: val needs split.folds"):
        SplitParams(fold_is="val")
