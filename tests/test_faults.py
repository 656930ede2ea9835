"""Faults of the disk and of stored files: one line naming the file, and the last good output kept."""

from __future__ import annotations

import errno

import pytest

from glioseg.errors import DataError
from glioseg.io import atomic_path, read_json, write_json


@pytest.mark.parametrize(
    ("code", "reason"), [(errno.ENOSPC, "no space left on device"), (errno.EROFS, "read-only file system")]
)
def test_a_full_or_read_only_disk_is_one_line_and_keeps_the_last_good_file(tmp_path, code, reason):
    target = tmp_path / "models" / "train.json"
    write_json(target, {"epoch": 1})
    with pytest.raises(DataError, match=rf"models/train\.json: cannot write: {reason}$"), atomic_path(target):
        raise OSError(code, reason.capitalize())
    assert read_json(target) == {"epoch": 1}
    assert [p.name for p in target.parent.iterdir()] == ["train.json"]


def test_other_os_errors_keep_their_traceback(tmp_path):
    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "x.json"):
        raise FileNotFoundError(errno.ENOENT, "gone")


def test_a_damaged_mlflow_store_is_one_line_naming_it(tmp_path, monkeypatch):
    from glioseg.tracking import store as tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    (tmp_path / "mlflow.db").write_text("not a database")
    expected = r"mlflow\.db: the MLflow store cannot be read \(file is not a database\); move the file aside"
    with pytest.raises(DataError, match=expected):
        tracking.ensure_experiment()
    with pytest.raises(DataError, match=expected):
        tracking.search_runs()


def test_a_full_artifact_store_is_one_line_and_the_run_is_not_left_running(tmp_path, monkeypatch):
    from glioseg.tracking import store as tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    overlay = tmp_path / "mlartifacts" / "glioseg" / "overlay.png"
    with (
        pytest.raises(DataError, match=rf"{overlay}: cannot write: no space left on device$"),
        tracking.start_run("train", {}, {}) as run,
    ):
        raise OSError(errno.ENOSPC, "No space left on device", str(overlay))
    assert tracking.client().get_run(run.info.run_id).info.status == "FAILED"


def test_a_store_moved_with_its_repository_says_where_new_artifacts_go(tmp_path, monkeypatch, capsys):
    import shutil

    from glioseg.tracking import store as tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    monkeypatch.chdir(old)
    tracking.ensure_experiment()
    assert "warning" not in capsys.readouterr().err
    shutil.copytree(old, new)
    monkeypatch.chdir(new)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # a new process: MLflow had put the old store there
    tracking.ensure_experiment()
    warning = capsys.readouterr().err
    assert f"experiment 'glioseg' keeps its artifacts in {(old / 'mlartifacts').as_uri()}/glioseg" in warning
    assert f"not under this repository's {(new / 'mlartifacts').as_uri()}" in warning
