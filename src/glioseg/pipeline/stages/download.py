"""The download stage: the raw cases of ``data.source`` (or the synthetic set) under data/raw, and the manifest.

Input the stage repairs or skips instead of refusing (:class:`~glioseg.errors.InputWarning`) is
printed, one warning per file, and counted in the stage's summary.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

from glioseg import paths
from glioseg.config.schema import Params
from glioseg.errors import InputWarning, RepairedInput, SkippedInput


def fetch(params: Params) -> dict[str, Any]:
    data = params.data
    manifest = params.format.fetch(
        data.source,
        paths.raw_cases(params.format.raw_name),
        paths.MANIFEST,
        patients=data.patients,
        synthetic=data.synthetic,
        settings=params.format_settings,
    )
    return {params.format.case_noun: manifest["patient"].nunique(), params.format.slice_noun: len(manifest)}


def run(params: Params) -> dict[str, Any]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InputWarning)
        summary = fetch(params)
    notes = [w for w in caught if issubclass(w.category, InputWarning)]
    for w in caught:
        if issubclass(w.category, InputWarning):
            print(f"warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return summary | {
        "repaired": sum(issubclass(w.category, RepairedInput) for w in notes),
        "skipped": sum(issubclass(w.category, SkippedInput) for w in notes),
    }
