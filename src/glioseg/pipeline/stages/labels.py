"""The labels stage: diagnosis, tumour pixels and components per slice -> data/labels.csv."""

from __future__ import annotations

from typing import Any

from glioseg import paths
from glioseg.config.schema import Params
from glioseg.data.labels import build_labels, summarise_labels
from glioseg.io import read_stage_csv, write_csv


def run(params: Params) -> dict[str, Any]:
    table = build_labels(read_stage_csv(paths.MANIFEST, "download"), read_stage_csv(paths.REMOVED, "clean"), params)
    write_csv(paths.LABELS, table)
    return summarise_labels(table)
