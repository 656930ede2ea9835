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
# no developer menu (no "Deploy" button). Only loopback names may open the page's WebSocket: a
# DNS-rebinding page (a foreign Host and Origin that resolve to 127.0.0.1) gets 403, as from the
# MLflow UI, and cannot drive the viewer or read a scan.
STREAMLIT_SETTINGS: dict[str, str | tuple[str, ...]] = {
    "server.address": "127.0.0.1",
    "server.allowedHosts": ("localhost", "127.0.0.1"),
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
    settings = [
        f"--{key}={value}"
        for key, values in {**STREAMLIT_SETTINGS, "server.port": port}.items()
        for value in (values if isinstance(values, tuple) else (values,))
    ]
    data_option = ["--data", str(data)] if data is not None else []
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        *settings,
        str(VIEWER),
        "--",
        "--model",
        model,
        *data_option,
        "--device",
        device,
    ]
