"""The code a stage runs: the glioseg modules its entry point reaches through imports, found statically.

DVC re-runs a stage when one of its dependencies changes, so a stage lists exactly these files
in ``dvc.yaml`` (``tests/test_stage_deps.py`` checks it): an edit of a module the stage imports
re-runs the stage, an edit of any other module leaves it alone. The training run's resume
fingerprint hashes the same files (:func:`module_closure`), so a checkpoint is resumed exactly
when DVC would not have re-run training for a code change.

Imports are read from the source with :mod:`ast`, never executed; every import counts, at module
level or inside a function (the CLI imports per command), so the closure may over-approximate
what one call executes but never misses a module it can reach. Importing ``glioseg.a.b`` runs
the package ``__init__`` files on the way, so those are part of the closure too.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "glioseg"
PACKAGE_DIR = Path(__file__).resolve().parent


def module_file(name: str) -> Path | None:
    """The source file of module ``glioseg.x.y`` (``x/y.py`` or the package ``x/y/__init__.py``), if any."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """The glioseg modules ``path`` imports (``from glioseg import paths`` names ``glioseg.paths``).

    glioseg imports absolutely; a relative import is refused rather than silently not followed.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise ValueError(f"{path}:{node.lineno}: relative import; glioseg modules import absolutely")
            source = node.module or ""
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names)
    return {name for name in found if module_file(name) is not None}


def _with_parents(name: str) -> list[str]:
    """``glioseg.data.brats`` -> ``glioseg``, ``glioseg.data``, ``glioseg.data.brats``."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def file_closure(entry: Path) -> list[Path]:
    """``entry`` and every glioseg source file it reaches through imports, sorted, entry first."""
    entry = entry.resolve()
    pending = sorted(imported_modules(entry))
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        for module in _with_parents(name):
            if module in seen:
                continue
            seen.add(module)
            path = module_file(module)
            assert path is not None
            pending.extend(imported_modules(path))
    files = sorted({module_file(name) for name in seen} - {entry})
    return [entry, *files]


def module_closure(module: str) -> list[Path]:
    """The source files of glioseg module ``module``, its packages' ``__init__`` files and everything it imports."""
    if module_file(module) is None:
        raise ValueError(f"{module}: not a glioseg module")
    return sorted({*file_closure(module_file(module)), *(module_file(name) for name in _with_parents(module))})
