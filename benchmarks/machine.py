"""What every benchmark records about the machine, and how it writes its JSON report."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_cores()} CPU cores ({cpu_name()})"


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine_info(device: torch.device, load_at_start: list[float]) -> dict[str, Any]:
    return {
        "device": device.type,
        "device_name": device_name(device),
        "cpu_cores": cpu_cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "loadavg_1_5_15_at_start": load_at_start,
        "loadavg_1_5_15_at_end": load_average(),
    }


def write_report(path: Path | None, report: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
