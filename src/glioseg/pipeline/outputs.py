"""The outputs each stage declares in dvc.yaml, and the two guards a stage runs on them before it starts.

Every output in dvc.yaml is ``persist: true``: DVC never removes it before running a stage, so
a stage whose params are rejected, or that is killed or interrupted, leaves the outputs of its
last good run in place, whichever stages the user selected (``-s``, ``--downstream``,
``dvc exp run``, a queue). The stage's runner removes what DVC used to remove, its directory
outputs, only once the params are valid; files are replaced atomically when the stage ends.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

from glioseg.errors import ConfigError

DVC_FILE = Path("dvc.yaml")
SECTIONS = ("outs", "metrics", "plots")


def _paths(entries: list) -> list[str]:
    return [next(iter(entry)) if isinstance(entry, dict) else entry for entry in entries]


def declared_outputs(dvc_file: Path = DVC_FILE) -> dict[str, list[Path]]:
    """Each stage's outputs by its DVC name (``sweep_train@wbce`` for a foreach stage's item)."""
    if not dvc_file.is_file():
        return {}
    stages = yaml.safe_load(dvc_file.read_text())["stages"]
    params = yaml.safe_load(Path("params.yaml").read_text()) if Path("params.yaml").is_file() else {}
    outputs: dict[str, list[Path]] = {}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        listed = [path for section in SECTIONS for path in _paths(body.get(section, []))]
        if "foreach" in stage:
            keys = list((params or {}).get("sweeps") or {}) if stage["foreach"] == "${sweeps}" else []
            for key in keys:
                outputs[f"{name}@{key}"] = [Path(path.replace("${key}", key)) for path in listed]
        else:
            outputs[name] = [Path(path) for path in listed]
    return outputs


def check_source_outside_outputs(source: str, key: str = "data.source", dvc_file: Path = DVC_FILE) -> None:
    """Refuse a source inside a stage's output (DVC would remove it) or holding one (a stage would rewrite it)."""
    candidate = Path(source)
    if not candidate.exists():
        return
    where = candidate.resolve()
    for stage, outputs in declared_outputs(dvc_file).items():
        for output in outputs:
            target = output.resolve()
            if where == target or target in where.parents or where in target.parents:
                raise ConfigError(
                    f"params.yaml: key '{key}': {source} overlaps {output}, an output of the "
                    f"{stage} stage that the pipeline rewrites; copy the data outside it and "
                    "point the key there"
                )


def clear_directory_outputs(stage: str | None, dvc_file: Path = DVC_FILE) -> list[Path]:
    """Remove ``stage``'s directory outputs (a link: the link only), as DVC would before a run; return them."""
    if not stage:
        return []
    cleared = []
    for output in declared_outputs(dvc_file).get(stage, []):
        if not output.is_dir():
            continue
        if output.is_symlink():
            output.unlink()
        else:
            shutil.rmtree(output)
        cleared.append(output)
    return cleared


def current_stage() -> str | None:
    """The stage DVC is running (``DVC_STAGE``), or None outside DVC."""
    return os.environ.get("DVC_STAGE") or None
