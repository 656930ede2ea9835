"""The viewer web app: ``glioseg serve`` runs the Streamlit script ``viewer.py``.

``logic.py`` holds everything the page computes (cases, prediction, areas, Dice, overlays, the
masks zip) without Streamlit, so it is tested without a browser. Importing this package does
not import Streamlit.
"""

from __future__ import annotations

import sys
from pathlib import Path

VIEWER = Path(__file__).with_name("viewer.py")

# Bound to loopback, no browser opened, no usage statistics, no file watcher (nothing to reload),
# no developer menu (no "Deploy" button).
STREAMLIT_SETTINGS = {
    "server.address": "127.0.0.1",
    "server.headless": "true",
    "server.fileWatcherType": "none",
    "server.runOnSave": "false",
    "browser.gatherUsageStats": "false",
    "client.toolbarMode": "minimal",
}


def streamlit_command(model: str, data: Path | None, port: int, device: str) -> list[str]:
    """The ``streamlit run`` command line that serves the viewer on 127.0.0.1:``port``.

    Without ``data`` the page takes the pipeline's raw folder of the model's dataset.
    """
    settings = [f"--{key}={value}" for key, value in {**STREAMLIT_SETTINGS, "server.port": port}.items()]
    data_option = ["--data", str(data)] if data is not None else []
    return [sys.executable, "-m", "streamlit", "run", *settings, str(VIEWER),
            "--", "--model", model, *data_option, "--device", device]
