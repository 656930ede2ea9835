"""The package map holds: layer contracts pass, and fail on an upward import; modules and folders stay small."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
PACKAGE = PROJECT / "src" / "glioseg"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
MAX_MODULE_LINES = 450
MAX_MODULES_PER_FOLDER = 12


def lint_imports(source_root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with the project's contracts, on the package found under ``source_root``."""
    env = {"PYTHONPATH": str(source_root), "PATH": "/usr/bin:/bin", "HOME": str(source_root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(PROJECT / "pyproject.toml")],
        cwd=source_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def copy_package(tmp_path: Path) -> Path:
    shutil.copytree(PACKAGE, tmp_path / "glioseg", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path / "glioseg"


def test_the_layer_contracts_pass_on_the_tree():
    result = lint_imports(PACKAGE.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "upward"),
    [
        ("config/schema.py", "from glioseg.training import loop"),  # params lean on training
        ("formats/lgg.py", "from glioseg.model import network"),  # a format leans on the model
        ("training/loop.py", "from glioseg.inference import predictor"),  # siblings import each other
        ("formats/brats.py", "import torch"),  # a format needs torch
    ],
)
def test_an_upward_or_sideways_import_breaks_a_contract(tmp_path, module, upward):
    copy = copy_package(tmp_path)
    target = copy / module
    target.write_text(target.read_text() + f"\n{upward}  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout


def test_no_module_is_long_and_no_folder_crowded():
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"
    crowded = {
        str(folder.relative_to(PACKAGE)): n
        for folder in [PACKAGE, *PACKAGE.rglob("*/")]
        if folder.is_dir()
        and (n := len([p for p in folder.glob("*.py") if p.name != "__init__.py"])) > MAX_MODULES_PER_FOLDER
    }
    assert not crowded, f"folders with more than {MAX_MODULES_PER_FOLDER} modules: {crowded}"


def test_the_design_package_map_names_every_module_and_only_modules_that_exist():
    design = (PROJECT / "docs" / "design.md").read_text()
    table = design[design.index("## Package map") : design.index("## Data flow")]
    named = {name for name in re.findall(r"`([a-z0-9_/]+\.py)`", table) if not name.startswith("tests/")}
    modules = {
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if path.name != "__init__.py" and "pipeline/stages" not in path.as_posix()
    }
    assert modules - named == set(), "modules the package map does not name"
    assert {name for name in named if not (PACKAGE / name).is_file()} == set(), "named modules that do not exist"
    stages = {path.stem for path in (PACKAGE / "pipeline" / "stages").glob("*.py") if path.name != "__init__.py"}
    assert stages == {path.stem for path in (PROJECT / "stages").glob("*.py")}, "a stage with two names"
