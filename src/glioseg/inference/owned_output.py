"""An output folder shared with the user: a command adds files and replaces only those it wrote itself.

``glioseg predict --out DIR`` may be pointed at a folder that holds other files (the working
directory, a folder of scans). Every file predict has written there is listed in a manifest
inside the folder (:data:`MANIFEST`), the union over its runs, so cases predicted one after
another into one folder accumulate. A run

- removes no file: an earlier run's files that it does not write again stay;
- replaces a file only when the manifest lists it, or with ``overwrite`` (a folder holding files
  but no manifest is refused without it);
- never writes over a protected file (an input, the truth mask beside it), even with ``overwrite``;
- never writes through a symlink that leads out of the folder.

Files are written to a hidden staging folder inside the folder and moved in only when the run
succeeded and every target passed those checks; if a move fails, the files already moved are
taken back out and what they replaced is put back. A failed run, a full or read-only disk
included, leaves the folder as it was. A killed one at worst leaves the staging folder or, killed
while moving files in, the files it was replacing in a hidden folder (:data:`REPLACED_PREFIX`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

from glioseg.errors import DataError
from glioseg.io import WRITE_FAULTS

MANIFEST = ".glioseg-predict.json"
STAGING_PREFIX = ".glioseg-predict-staging-"
REPLACED_PREFIX = ".glioseg-predict-replaced-"


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
    """Refuse a file or a path under one, and a folder holding files this tool did not write (unless ``overwrite``)."""
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{option} {folder}: is a file; give a folder")
    if not folder.exists():
        above = next((parent for parent in folder.parents if parent.exists()), None)
        if above is not None and not above.is_dir():
            raise DataError(f"{option} {folder}: {above} is a file, so it cannot hold a folder")
        return
    if overwrite or (folder / MANIFEST).is_file():
        return
    foreign = [entry.name for entry in folder.iterdir() if not entry.name.startswith((STAGING_PREFIX, REPLACED_PREFIX))]
    if foreign:
        raise DataError(
            f"{option} {folder}: holds files glioseg did not write ({foreign[0]}, ...); choose a new or "
            "empty folder, or pass --overwrite to replace only files of the same names"
        )


def check_targets(
    folder: Path,
    names: Iterable[str],
    owned: set[str],
    overwrite: bool,
    protected: Iterable[Path] = (),
    option: str = "--out",
) -> None:
    """Refuse, before any file is moved in, a target that leads out of ``folder`` through a symlink, is a
    protected file (whatever ``overwrite`` says) or a folder, or is a file not in ``owned`` (unless ``overwrite``)."""
    root = folder.resolve()
    guarded = {Path(path).resolve() for path in protected}
    for name in names:
        target = folder / name
        steps = _steps(folder, name)
        resolved = target.resolve()
        if not resolved.is_relative_to(root):
            link = next((path for path in steps if path.is_symlink()), target)
            raise DataError(
                f"{option} {folder}: {link} is a symlink to {link.resolve()}, outside the folder; "
                "predict does not write through it"
            )
        if resolved in guarded:
            raise DataError(
                f"{option} {folder}: the prediction {target} would replace the input's own {resolved}; "
                f"prediction and truth must not share a name in one folder: choose another {option}"
            )
        if target.is_dir():
            raise DataError(f"{option} {folder}: {target} is a folder, where predict writes a file")
        blocking = next((path for path in steps[:-1] if path.exists() and not path.is_dir()), None)
        if blocking is not None:
            raise DataError(f"{option} {folder}: {blocking} is a file, where predict writes a folder")
        if os.path.lexists(target) and name not in owned and not overwrite:
            raise DataError(
                f"{option} {folder}: {target} exists and predict did not write it; pass --overwrite "
                "to replace it, or choose another folder"
            )


def _steps(folder: Path, name: str) -> list[Path]:
    """The paths from ``folder`` down to ``folder / name``, outermost first (``folder`` itself excluded)."""
    steps = [folder]
    for part in PurePosixPath(name).parts:
        steps.append(steps[-1] / part)
    return steps[1:]


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its parents that do not exist yet, outermost first."""
    return [path for path in (folder, *folder.parents) if not path.exists()][::-1]


@contextlib.contextmanager
def staged_output(
    folder: Path, overwrite: bool = False, protected: Iterable[Path] = (), option: str = "--out"
) -> Iterator[Path]:
    """Yield an empty staging folder; when the block succeeds and its files pass :func:`check_targets`, move them
    into ``folder`` and add them to its manifest.

    A full or read-only disk is a one-line error naming ``folder``, which is left as it was.
    """
    made = _missing_folders(folder)
    staging = None
    done = False
    try:
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, suffix=".partial", dir=folder))
        yield staging
        written = sorted(path.relative_to(staging).as_posix() for path in staging.rglob("*") if path.is_file())
        # Files the user removed since are dropped: their names are no longer predict's to replace.
        earlier = {name for name in owned_files(folder) if os.path.lexists(folder / name)}
        check_targets(folder, [*written, MANIFEST], earlier | {MANIFEST}, overwrite, protected, option)
        (staging / MANIFEST).write_text(json.dumps({"files": sorted(earlier | set(written))}, indent=2) + "\n")
        _move_in(staging, folder, [*written, MANIFEST])
        done = True
    except OSError as exc:
        if exc.errno not in WRITE_FAULTS:
            raise
        reason = (exc.strerror or os.strerror(exc.errno)).lower()
        raise DataError(f"{option} {folder}: cannot write: {reason}; the folder is left as it was") from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if not done:
            for path in reversed(made):
                with contextlib.suppress(OSError):
                    path.rmdir()


def _move_in(staging: Path, folder: Path, names: list[str]) -> None:
    """Move each staged file onto its target; if a move fails, undo the earlier ones and put back what they replaced.

    Replaced files wait in a hidden folder beside the targets (same disk, so moving them is a rename)
    until every move succeeded.
    """
    replaced = Path(tempfile.mkdtemp(prefix=REPLACED_PREFIX, dir=folder))
    moves: list[tuple[Path, Path | None]] = []  # (target, where the file it replaced went)
    made: list[Path] = []
    try:
        for name in names:
            target = folder / name
            made += _missing_folders(target.parent)
            target.parent.mkdir(parents=True, exist_ok=True)
            backup = None
            if os.path.lexists(target):
                backup = replaced / name
                backup.parent.mkdir(parents=True, exist_ok=True)
                os.replace(target, backup)
            moves.append((target, backup))
            os.replace(staging / name, target)
    except BaseException:
        try:
            for target, backup in reversed(moves):
                if backup is None:
                    target.unlink(missing_ok=True)
                else:
                    os.replace(backup, target)
            for path in reversed(made):
                if path.exists():  # a failed mkdir may have made only some of them
                    path.rmdir()
        except OSError as exc:
            raise DataError(
                f"{folder}: a failed write could not be undone ({exc.strerror}); the files it "
                f"replaced are in {replaced}"
            ) from None
        shutil.rmtree(replaced, ignore_errors=True)
        raise
    shutil.rmtree(replaced, ignore_errors=True)
