"""Faults of the disk and of stored files: one line naming the file, and the last good output kept."""

from __future__ import annotations

import errno

import pytest

from glioseg.errors import DataError
from glioseg.io import atomic_path, read_json, write_json


@pytest.mark.parametrize(("code", "reason"), [(errno.ENOSPC, "no space left on device"),
                                              (errno.EROFS, "read-only file system")])
def test_a_full_or_read_only_disk_is_one_line_and_keeps_the_last_good_file(tmp_path, code, reason):
    target = tmp_path / "models" / "train.json"
    write_json(target, {"epoch": 1})
    with pytest.raises(DataError, match=rf"models/train\.json: cannot write: {reason}$"):
        with atomic_path(target):
            raise OSError(code, reason.capitalize())
    assert read_json(target) == {"epoch": 1}
    assert [p.name for p in target.parent.iterdir()] == ["train.json"]


def test_other_os_errors_keep_their_traceback(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_path(tmp_path / "x.json"):
            raise FileNotFoundError(errno.ENOENT, "gone")


def test_a_damaged_mlflow_store_is_one_line_naming_it(tmp_path, monkeypatch):
    from glioseg import tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    (tmp_path / "mlflow.db").write_text("not a database")
    expected = r"mlflow\.db: the MLflow store cannot be read \(file is not a database\); move the file aside"
    with pytest.raises(DataError, match=expected):
        tracking.ensure_experiment()
    with pytest.raises(DataError, match=expected):
        tracking.search_runs()
