"""Data formats, one class each behind :class:`~glioseg.formats.base.DataFormat`; ``FORMATS`` is the registry.

A new format is one module with its class and one entry here; the ``dataset`` param's choices,
the download stage, the reader of every later stage, predict and the viewer all come from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from glioseg.errors import DataError
from glioseg.formats.base import DataFormat
from glioseg.formats.brats import Brats
from glioseg.formats.lgg import LGG

FORMATS: dict[str, DataFormat[Any]] = {"lgg": LGG(), "brats": Brats()}


def get_format(name: str) -> DataFormat[Any]:
    """The format named ``name``; a KeyError for a name the registry does not hold (the schema validates it)."""
    return FORMATS[name]


def format_of_case(folder: Path) -> DataFormat[Any]:
    """The format whose case ``folder`` is; an error naming the folder when it is none of theirs."""
    for data_format in FORMATS.values():
        if data_format.is_case(folder):
            return data_format
    raise DataError(f"{folder}: not a case folder of any data format ({', '.join(FORMATS)})")


def format_holding(source: Path) -> DataFormat[Any] | None:
    """The first format that finds input of its own under ``source``, or None."""
    return next((f for f in FORMATS.values() if f.holds_scans(source)), None)
