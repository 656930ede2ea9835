"""An output folder shared with the user: a command adds or replaces only the files it wrote itself.

``glioseg predict --out DIR`` may be pointed at a folder that holds other files (the working
directory, a folder of scans). The files a run writes are listed in a manifest inside the folder
(:data:`MANIFEST`); the next run into the same folder replaces them and removes those of its
earlier files it did not write again, and never touches any other file. A folder with files but
no manifest is refused unless the user says ``overwrite``, and then only same-named files are
replaced. Files are written to a hidden staging folder first and moved in only when the run
succeeded, so a failed or killed run leaves the folder as it was (at worst the staging folder).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from glioseg.errors import DataError
from glioseg.io import write_json

MANIFEST = ".glioseg-predict.json"
STAGING_PREFIX = ".glioseg-predict-staging-"


def owned_files(folder: Path) -> list[str]:
    """The files an earlier run listed in ``folder``'s manifest (relative, inside the folder only)."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return []
    try:
        names = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        raise DataError(f"{manifest}: not a glioseg manifest; remove it or choose another folder") from None
    return [name for name in names if isinstance(name, str) and _inside(name)]


def _inside(name: str) -> bool:
    path = PurePosixPath(name)
    return bool(name) and not path.is_absolute() and ".." not in path.parts


def check_output_folder(folder: Path, overwrite: bool, option: str = "--out") -> None:
    """Refuse a file, and a folder holding files this tool did not write (unless ``overwrite``)."""
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{option} {folder}: is a file; give a folder")
    if not folder.is_dir() or overwrite or (folder / MANIFEST).is_file():
        return
    foreign = [entry.name for entry in folder.iterdir() if not entry.name.startswith(STAGING_PREFIX)]
    if foreign:
        raise DataError(f"{option} {folder}: holds files glioseg did not write ({foreign[0]}, ...); choose a new or "
                        "empty folder, or pass --overwrite to replace only files of the same names")


@contextlib.contextmanager
def staged_output(folder: Path) -> Iterator[Path]:
    """Yield an empty staging folder; when the block succeeds, its files replace the run's files in ``folder``."""
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, suffix=".partial", dir=folder))
    try:
        yield staging
        written = sorted(path.relative_to(staging).as_posix() for path in staging.rglob("*") if path.is_file())
        earlier = owned_files(folder)
        for name in written:
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, target)
        for name in set(earlier) - set(written):
            stale = folder / name
            if stale.is_file() and not stale.is_symlink():
                stale.unlink()
        write_json(folder / MANIFEST, {"files": written})
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(folder.iterdir()):
            folder.rmdir()
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
