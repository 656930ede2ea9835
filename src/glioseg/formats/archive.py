"""Zip archives as sources: refused when damaged, members outside the archive's tree skipped with a warning."""

from __future__ import annotations

import shutil
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from glioseg.errors import DataError, SkippedInput


def first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


@contextmanager
def open_zip(path: Path, shown: str) -> Iterator[zipfile.ZipFile]:
    """The archive at ``path``; not a zip, or damaged while reading, is one line naming it as ``shown``."""
    if not zipfile.is_zipfile(path):
        raise DataError(f"{shown}: not a valid zip file")
    try:
        with zipfile.ZipFile(path) as archive:
            yield archive
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise DataError(f"{shown}: damaged zip ({first_line(exc)})") from None


def is_unsafe(member: str, shown: str) -> bool:
    """An absolute member or one with ``..`` (it would write outside data/raw): warned about and skipped."""
    path = PurePosixPath(member)
    if path.is_absolute() or ".." in path.parts:
        warnings.warn(f"{shown}:{member}: an absolute path or one with '..'; skipped", SkippedInput, stacklevel=3)
        return True
    return False


def extract(archive: zipfile.ZipFile, member: str, dest: Path) -> None:
    """Stream one member to ``dest``, without unpacking anything else."""
    with archive.open(member) as src, open(dest, "wb") as dst:
        shutil.copyfileobj(src, dst)
