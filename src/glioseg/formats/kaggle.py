"""Downloading a Kaggle dataset's zip with the ``kaggle`` package (``data.source: kaggle``)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from glioseg.errors import DataError
from glioseg.formats.archive import first_line


def has_credentials() -> bool:
    """Whether the ``kaggle`` package will find credentials.

    Checked before importing it: the package authenticates at import time and fails without them.
    """
    env = os.environ
    if env.get("KAGGLE_API_TOKEN") or (env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY")):
        return True
    home = Path.home()
    config_dirs = [home / ".kaggle", Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"]
    if env.get("KAGGLE_CONFIG_DIR"):
        config_dirs.append(Path(env["KAGGLE_CONFIG_DIR"]))
    return any((d / name).is_file() for d in config_dirs for name in ("kaggle.json", "access_token"))


def download_zip(dataset: str, folder: Path) -> Path:
    """Download Kaggle dataset ``dataset``'s zip into ``folder`` and return its path."""
    if importlib.util.find_spec("kaggle") is None:
        raise DataError("data.source 'kaggle' needs the kaggle package: pip install kaggle")
    if not has_credentials():
        raise DataError(
            "data.source 'kaggle' needs Kaggle API credentials: put kaggle.json in ~/.kaggle/ "
            "or set KAGGLE_USERNAME and KAGGLE_KEY"
        )
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi

        api = KaggleApi()
        api.authenticate()
        api.dataset_download_files(dataset, path=str(folder), unzip=False, quiet=False)
    # The client surfaces network, HTTP and auth failures as many exception types.
    except Exception as exc:
        raise DataError(f"kaggle download of {dataset} failed: {first_line(exc)}") from None
    zips = sorted(folder.glob("*.zip"))
    if not zips:
        raise DataError(f"kaggle download of {dataset} produced no zip file")
    return zips[0]
