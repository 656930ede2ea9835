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
import re
import sys
from pathlib import Path

PACKAGE = "glioseg"
PACKAGE_DIR = Path(__file__).resolve().parents[1]


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


def _existing_module_file(name: str) -> Path:
    """:func:`module_file` of a module known to exist (one found by an import, or a package above it)."""
    path = module_file(name)
    assert path is not None
    return path


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
    """``glioseg.formats.synthetic.lgg`` -> ``glioseg``, ``glioseg.formats``, ..., ``glioseg.formats.synthetic.lgg``."""
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
    files = sorted({_existing_module_file(name) for name in seen} - {entry})
    return [entry, *files]


def module_closure(module: str) -> list[Path]:
    """The source files of glioseg module ``module``, its packages' ``__init__`` files and everything it imports."""
    path = module_file(module)
    if path is None:
        raise ValueError(f"{module}: not a glioseg module")
    return sorted({*file_closure(path), *(_existing_module_file(name) for name in _with_parents(module))})


CODE_DEP = re.compile(r"^(\s+)- ((?:src|stages)/\S+)$")
SCRIPT = re.compile(r"^\s+cmd: python (stages/\S+\.py)")


def with_derived_deps(dvc_yaml: str, root: Path) -> str:
    """``dvc_yaml``'s text with each stage's code deps replaced by its script's closure (comments kept)."""
    lines, result, script = dvc_yaml.split("\n"), [], None
    for line in lines:
        command = SCRIPT.match(line)
        if command:
            script = root / command.group(1)
        code = CODE_DEP.match(line)
        if code is None:
            result.append(line)
        elif script is not None:
            indent = code.group(1)
            result += [f"{indent}- {path.relative_to(root.resolve()).as_posix()}" for path in file_closure(script)]
            script = None
    return "\n".join(result)


if __name__ == "__main__":  # python -m glioseg.pipeline.codedeps [dvc.yaml]: rewrite the stages' code deps
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "dvc.yaml")
    target.write_text(with_derived_deps(target.read_text(), target.resolve().parent))
