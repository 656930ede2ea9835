"""Train/val/test split, by patient (default) or by slice (the seed's leaky protocol).

With ``split.folds: k`` the patients are dealt into k stratified folds instead; fold
``split.fold`` is the test set (5-fold cross-validation: ``dvc exp run --queue -S
split.folds=5 -S split.fold=0,1,2,3,4``).

Patients are stratified by tumour burden (share of their slices that are positive): they are
shuffled with the seed, sorted by burden, and dealt to the subsets in proportion, so every
subset sees light and heavy cases. ``by: slice`` deals slices, stratified by diagnosis; slices of
one patient then land on both sides, which flatters test scores (documented as leaky).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from glioseg.config import SplitParams
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
            donor = max(sizes, key=sizes.get)
            if sizes[donor] <= 1:
                raise DataError(f"cannot split {n} items into {', '.join(fractions)}: too few")
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
    """k-fold by patient: fold ``params.fold`` is the test set, val is drawn from the others."""
    shares = dict.fromkeys(range(params.folds), 1 / params.folds)
    folds = _stratified_assign(burden, "burden", shares, seed).reindex(burden.index)
    subset = pd.Series("test", index=burden.index)
    rest = burden[folds != params.fold]
    share = params.val / (params.train + params.val)
    subset[rest.index] = _stratified_assign(rest, "burden", {"train": 1 - share, "val": share}, seed)
    return subset


def split_slices(labels: pd.DataFrame, params: SplitParams, seed: int) -> pd.DataFrame:
    """One row per kept slice: patient, slice, diagnosis, subset."""
    kept = labels[labels["kept"] == 1][["patient", "slice", "diagnosis"]].reset_index(drop=True)
    if kept.empty:
        raise DataError("data/labels.csv: no kept slices to split")
    fractions = {name: getattr(params, name) for name in SUBSETS}
    if params.by == "patient":
        burden = kept.groupby("patient", as_index=False)["diagnosis"].mean().rename(columns={"diagnosis": "burden"})
        burden["subset"] = (fold_assign(burden, params, seed) if params.folds
                            else _stratified_assign(burden, "burden", fractions, seed))
        result = kept.merge(burden[["patient", "subset"]], on="patient")
    else:
        result = kept.assign(subset=_stratified_assign(kept, "diagnosis", fractions, seed))
    return result.sort_values(["patient", "slice"]).reset_index(drop=True)


def summarise_split(split: pd.DataFrame) -> dict[str, dict[str, int]]:
    summary = {}
    for name in SUBSETS:
        part = split[split["subset"] == name]
        summary[name] = {
            "patients": part["patient"].nunique(),
            "slices": len(part),
            "positive": int(part["diagnosis"].sum()),
        }
    return summary
