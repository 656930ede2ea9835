"""Train/val/test split, by patient (default), by acquiring site, or by slice (the seed's leaky protocol).

With ``split.folds: k`` the patients are dealt into k stratified folds instead; fold
``split.fold`` is the test set (5-fold cross-validation: ``dvc exp run --queue -S
split.folds=5 -S split.fold=0,1,2,3,4``). With ``split.fold_is: val`` the test set is the one
of the patient split and the other patients are dealt into the k folds, fold ``split.fold``
being val: k fold models that never saw the test patients, for an ensemble.

With ``split.by: site`` the test set is every patient of one acquiring site (leave one site out):
the kaggle_3m patient id ``TCGA_<site>_<id>_<date>`` names the institution, sites are numbered in
sorted order and ``split.fold`` picks the held-out one; the other sites' patients are dealt into
train and val as in a patient fold.

Patients are stratified by tumour burden (share of their slices that are positive): they are
shuffled with the seed, sorted by burden, and dealt to the subsets in proportion, so every
subset sees light and heavy cases. ``by: slice`` deals slices, stratified by diagnosis; slices of
one patient then land on both sides, which flatters test scores (documented as leaky).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from glioseg.config.sections import SplitParams
from glioseg.data.sites import held_out_site, patient_site
from glioseg.errors import DataError

SUBSETS = ("train", "val", "test")


def subset_sizes(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """Largest-remainder allocation of ``n`` items; every non-zero fraction gets at least one."""
    raw = {name: n * frac for name, frac in fractions.items()}
    sizes = {name: int(np.floor(value)) for name, value in raw.items()}
    by_remainder = sorted(raw, key=lambda name: raw[name] - sizes[name], reverse=True)
    for name in by_remainder[: n - sum(sizes.values())]:
        sizes[name] += 1
    for name, frac in fractions.items():
        if frac > 0 and sizes[name] == 0:
            donor = max(sizes, key=lambda name: sizes[name])
            if sizes[donor] <= 1:
                raise DataError(f"cannot split {n} items into {', '.join(map(str, fractions))}: too few")
            sizes[donor] -= 1
            sizes[name] += 1
    return sizes


def deal(n: int, sizes: dict[str, int]) -> list[str]:
    """Spread subsets evenly along an ordered list: item i goes to the subset furthest behind quota."""
    dealt: dict[str, int] = dict.fromkeys(sizes, 0)
    order = []
    for i in range(n):
        open_subsets = [name for name in sizes if dealt[name] < sizes[name]]
        name = max(open_subsets, key=lambda s: sizes[s] * (i + 1) / n - dealt[s])
        dealt[name] += 1
        order.append(name)
    return order


def _stratified_assign(keys: pd.DataFrame, strata: str, fractions: dict[str, float], seed: int) -> pd.Series:
    rng = np.random.default_rng(seed)
    shuffled = keys.iloc[rng.permutation(len(keys))]
    ordered = shuffled.sort_values(strata, kind="stable")
    sizes = subset_sizes(len(ordered), fractions)
    return pd.Series(deal(len(ordered), sizes), index=ordered.index)


def fold_assign(burden: pd.DataFrame, params: SplitParams, seed: int) -> pd.Series:
    """k-fold by patient: fold ``params.fold`` is the test set, val is drawn from the others; or, with
    ``fold_is: val``, the test set is the patient split's and fold ``params.fold`` of the rest is val."""
    # Fold numbers stand in for subset names: the folds are dealt as the subsets are.
    if len(burden) < params.folds:
        raise DataError(
            f"split.folds: {params.folds} folds need at least {params.folds} patients; the data has {len(burden)}"
        )
    shares: dict[Any, float] = dict.fromkeys(range(params.folds), 1 / params.folds)
    if params.fold_is == "val":
        fractions = {name: getattr(params, name) for name in SUBSETS}
        subset = _stratified_assign(burden, "burden", fractions, seed).reindex(burden.index)
        rest = burden[subset != "test"]
        folds = _stratified_assign(rest, "burden", shares, seed)
        subset[rest.index] = np.where(folds.reindex(rest.index) == params.fold, "val", "train")
        return subset
    folds = _stratified_assign(burden, "burden", shares, seed).reindex(burden.index)
    subset = pd.Series("test", index=burden.index)
    rest = burden[folds != params.fold]
    share = params.val / (params.train + params.val)
    subset[rest.index] = _stratified_assign(rest, "burden", {"train": 1 - share, "val": share}, seed)
    return subset


def site_assign(burden: pd.DataFrame, params: SplitParams, seed: int) -> pd.Series:
    """Leave one site out: the patients of site ``params.fold`` are the test set, val is drawn from the others."""
    site = burden["patient"].map(patient_site)
    test = site == held_out_site(burden["patient"], params.fold)
    rest = burden[~test]
    if len(rest) < 2:
        raise DataError(f"split.by: site: only {len(rest)} patient(s) outside the held-out site, too few to train")
    subset = pd.Series("test", index=burden.index)
    share = params.val / (params.train + params.val)
    subset[rest.index] = _stratified_assign(rest, "burden", {"train": 1 - share, "val": share}, seed)
    return subset


def split_slices(labels: pd.DataFrame, params: SplitParams, seed: int) -> pd.DataFrame:
    """One row per kept slice: patient, slice, diagnosis, subset."""
    kept = labels[labels["kept"] == 1][["patient", "slice", "diagnosis"]].reset_index(drop=True)
    if kept.empty:
        raise DataError("data/labels.csv: no kept slices to split")
    fractions = {name: getattr(params, name) for name in SUBSETS}
    if params.by in ("patient", "site"):
        burden = kept.groupby("patient", as_index=False)["diagnosis"].mean().rename(columns={"diagnosis": "burden"})
        if params.by == "site":
            burden["subset"] = site_assign(burden, params, seed)
        elif params.folds:
            burden["subset"] = fold_assign(burden, params, seed)
        else:
            burden["subset"] = _stratified_assign(burden, "burden", fractions, seed)
        result = kept.merge(burden[["patient", "subset"]], on="patient")
    else:
        result = kept.assign(subset=_stratified_assign(kept, "diagnosis", fractions, seed))
    return result.sort_values(["patient", "slice"]).reset_index(drop=True)


def summarise_split(split: pd.DataFrame, params: SplitParams) -> dict:
    """Patients, slices and tumour slices per subset (and the held-out site of a site split)."""
    summary: dict = {"test_site": held_out_site(split["patient"], params.fold)} if params.by == "site" else {}
    for name in SUBSETS:
        part = split[split["subset"] == name]
        summary[name] = {
            "patients": part["patient"].nunique(),
            "slices": len(part),
            "positive": int(part["diagnosis"].sum()),
        }
    return summary
