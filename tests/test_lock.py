"""The committed dvc.lock, metrics and report are what the committed code and params produce.

DVC records the hash of every code file and the value of every param a stage ran with; a lock
that names other hashes or values (or stages dvc.yaml no longer has) describes a tree that is
gone, and so do the metrics committed with it. Refresh both with `dvc repro` of the commit.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[1]
CODE_ROOTS = ("src/", "stages/")
REFRESH = "stale dvc.lock: run `dvc repro` on this commit and commit dvc.lock with the metrics it writes"


def expected_stages(dvc_yaml: dict, params: dict) -> set[str]:
    names = set()
    for name, stage in dvc_yaml["stages"].items():
        if "foreach" in stage:
            assert stage["foreach"] == "${sweeps}", name
            names |= {f"{name}@{key}" for key in params["sweeps"]}
        else:
            names.add(name)
    return names


def stale_entries(root: Path) -> list[str]:
    """What in ``root``'s dvc.lock differs from its tree: stage names, code hashes, param values, dep lists."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    dvc_yaml = yaml.safe_load((root / "dvc.yaml").read_text())
    params = yaml.safe_load((root / "params.yaml").read_text())
    problems = []
    expected = expected_stages(dvc_yaml, params)
    problems += [f"{name}: in dvc.lock, not in dvc.yaml" for name in sorted(set(lock) - expected)]
    problems += [f"{name}: in dvc.yaml, not in dvc.lock" for name in sorted(expected - set(lock))]
    for name, entry in sorted(lock.items()):
        if name not in expected:
            continue
        stage = dvc_yaml["stages"][name.partition("@")[0]]
        key = name.partition("@")[2]
        body = stage.get("do", stage)
        declared = sorted(dep.replace("${key}", key) for dep in body.get("deps", []))
        recorded = sorted(dep["path"] for dep in entry.get("deps", []))
        if declared != recorded:
            problems.append(f"{name}: deps {sorted(set(declared) ^ set(recorded))} differ from dvc.yaml")
        for dep in entry.get("deps", []):
            path = root / dep["path"]
            if dep["path"].startswith(CODE_ROOTS) and (
                not path.is_file() or hashlib.md5(path.read_bytes()).hexdigest() != dep["md5"]
            ):
                problems.append(f"{name}: {dep['path']} differs from the version it ran with")
        for file_params in entry.get("params", {}).values():
            for param, value in file_params.items():
                current = _lookup(params, param)
                if current != value:
                    problems.append(f"{name}: param {param} is {current!r}, it ran with {value!r}")
    return problems


def _lookup(tree: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def test_the_committed_lock_matches_the_committed_tree():
    problems = stale_entries(PROJECT)
    assert not problems, f"{REFRESH}:\n" + "\n".join(problems)


def fresh_lock(root: Path) -> dict:
    """The lock DVC would write for ``root``'s tree, as far as :func:`stale_entries` reads one."""
    dvc_yaml = yaml.safe_load((root / "dvc.yaml").read_text())
    params = yaml.safe_load((root / "params.yaml").read_text())
    stages = {}
    for name in expected_stages(dvc_yaml, params):
        stage = dvc_yaml["stages"][name.partition("@")[0]]
        key = name.partition("@")[2]
        body = stage.get("do", stage)
        deps = [dep.replace("${key}", key) for dep in body.get("deps", [])]
        stages[name] = {
            "deps": [
                {
                    "path": dep,
                    "md5": hashlib.md5((root / dep).read_bytes()).hexdigest() if dep.startswith(CODE_ROOTS) else "0",
                }
                for dep in deps
            ],
            "params": {
                "params.yaml": {
                    param.replace("${key}", key): _lookup(params, param.replace("${key}", key))
                    for param in body.get("params", [])
                }
            },
        }
    return {"schema": "2.0", "stages": stages}


@pytest.mark.parametrize("damage", ["code", "param", "removed-stage"])
def test_a_stale_lock_is_found(tmp_path, damage):
    for name in ("dvc.yaml", "params.yaml"):
        (tmp_path / name).write_text((PROJECT / name).read_text())
    for root in ("src", "stages"):
        for path in PROJECT.joinpath(root).rglob("*.py"):
            target = tmp_path / path.relative_to(PROJECT)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    lock = fresh_lock(tmp_path)
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert stale_entries(tmp_path) == []
    if damage == "code":
        with (tmp_path / "src/glioseg/training/losses.py").open("a") as handle:
            handle.write("\n# edited\n")
        assert "train: src/glioseg/training/losses.py differs from the version it ran with" in stale_entries(tmp_path)
    elif damage == "param":
        params = yaml.safe_load((tmp_path / "params.yaml").read_text())
        params["lr"] = 0.5
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        assert any(line.startswith("train: param lr is 0.5") for line in stale_entries(tmp_path))
    else:
        lock["stages"]["sweep@old"] = lock["stages"]["train"]
        (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
        assert "sweep@old: in dvc.lock, not in dvc.yaml" in stale_entries(tmp_path)
