"""Atomic writes (an output appears whole under its final name, or not at all) and output locks."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import yaml

from glioseg.errors import BusyError, ConfigError, DataError

# Faults of the disk a user fixes (make room, make it writable), not bugs.
WRITE_FAULTS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}


def write_fault(exc: OSError, path: str | os.PathLike) -> DataError | None:
    """``exc`` as a one-line error naming the file (``path`` when the error names none), for a full or
    read-only disk; None for any other OSError."""
    if exc.errno not in WRITE_FAULTS:
        return None
    assert exc.strerror is not None  # an OSError with an errno carries its message
    return DataError(f"{exc.filename or path}: cannot write: {exc.strerror.lower()}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it onto ``path`` only if the block succeeds.

    Works for files and directories alike: the caller writes to the yielded path, which is
    removed if the block raises.
    """
    final = Path(path)
    tmp = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
        target = tmp / final.name
        yield target
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        elif final.exists() or final.is_symlink():
            final.unlink()
        os.replace(target, final)
    except OSError as exc:
        fault = write_fault(exc, final)
        if fault is None:
            raise
        raise fault from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, data: object) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_csv(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def read_json(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text())


def read_stage_csv(path: str | os.PathLike, stage: str) -> pd.DataFrame:
    """A CSV another stage writes; missing, it names the stage that makes it."""
    if not Path(path).is_file():
        raise DataError(f"{path}: not found (run `dvc repro {stage}`)")
    return pd.read_csv(path)


def read_yaml(path: str | os.PathLike, what: str) -> object:
    """A YAML file's content; a missing file or bad YAML is a one-line ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None


@contextlib.contextmanager
def exclusive_lock(folder: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold ``folder``'s lock file while ``what`` writes there; a second holder gets a one-line error.

    The lock is the kernel's (``flock``), so it is released when its process dies, however it
    dies: a killed training never leaves a stale lock. The file names the holder's process id.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / ".lock"
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise BusyError(
                f"{folder}: another {what} (pid {holder}) is writing here; stop it "
                f"(kill {holder}) or wait for it to finish"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_secret(path: Path, text: str) -> None:
    """``text`` in a file only its owner reads: 0600 from its creation on, never briefly wider."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.unlink(missing_ok=True)
    with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        out.write(text)
    os.replace(partial, path)
