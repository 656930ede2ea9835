"""Every DVC stage depends on exactly the code it runs, derived statically from its script's imports."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from glioseg.pipeline import codedeps
from glioseg.pipeline.stages.train import fingerprint

PROJECT = Path(__file__).resolve().parents[1]
CODE_ROOTS = ("src/", "stages/")


def relative_closure(entry: Path, root: Path) -> list[str]:
    """:func:`codedeps.file_closure` as paths relative to ``root`` with forward slashes, as ``dvc.yaml`` lists them."""
    return [path.relative_to(root.resolve()).as_posix() for path in codedeps.file_closure(entry)]


def stage_definitions() -> dict[str, dict]:
    """dvc.yaml's stages, a foreach stage by its template (its code deps are the same for every key)."""
    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def script(stage: dict) -> Path:
    """The stage script its command runs (``python stages/<name>.py [args]``)."""
    words = shlex.split(stage["cmd"])
    assert words[0] == "python" and words[1].startswith("stages/"), stage["cmd"]
    return PROJECT / words[1]


def listed_code(stage: dict) -> set[str]:
    return {dep for dep in stage["deps"] if dep.startswith(CODE_ROOTS)}


@pytest.mark.parametrize("name", list(stage_definitions()))
def test_a_stage_lists_exactly_the_modules_its_script_imports(name):
    stage = stage_definitions()[name]
    derived = set(relative_closure(script(stage), PROJECT))
    listed = listed_code(stage)
    assert not derived - listed, f"{name}: dvc.yaml lacks {sorted(derived - listed)}"
    assert not listed - derived, f"{name}: dvc.yaml lists {sorted(listed - derived)}, which {name} never imports"


def test_every_stage_script_is_a_stage():
    scripts = {script(stage).name for stage in stage_definitions().values()}
    assert scripts == {path.name for path in (PROJECT / "stages").glob("*.py")}


def test_training_code_stays_out_of_the_data_stages_and_inference_code_out_of_training():
    stages = stage_definitions()
    for data_stage in ("download", "clean", "labels", "split", "cache", "augment"):
        assert "src/glioseg/training/loop.py" not in listed_code(stages[data_stage]), data_stage
    for training in ("train", "sweep_train"):
        code = listed_code(stages[training])
        inference = {
            "src/glioseg/inference/predictor.py",
            "src/glioseg/inference/postprocess.py",
            "src/glioseg/evaluation/evaluate.py",
        }
        assert inference.isdisjoint(code)
    assert "src/glioseg/inference/postprocess.py" in listed_code(stages["evaluate"])


def test_the_resume_fingerprint_hashes_the_train_stages_code(tmp_path):
    """The fingerprint's files are the train stage's code deps but for the thin stage script and its runner."""
    closure = codedeps.module_closure("glioseg.pipeline.stages.train")
    fingerprinted = {path.relative_to(PROJECT).as_posix() for path in closure}
    for name in ("train", "sweep_train"):
        stage = stage_definitions()[name]
        thin = {f"stages/{script(stage).name}", "src/glioseg/pipeline/runner.py", "src/glioseg/pipeline/outputs.py"}
        if name == "sweep_train":
            thin.add("src/glioseg/pipeline/stages/sweep_train.py")
        assert listed_code(stage) - fingerprinted == thin

    from glioseg.config.schema import Params

    cache = tmp_path / "slices.npz"
    cache.write_bytes(b"cache")
    before = fingerprint(Params(), cache, {})
    assert fingerprint(Params(inference={"tta": True}, run={"threads": 1}), cache, {}) == before
    assert fingerprint(Params(lr=0.01), cache, {}) != before


def test_the_closure_follows_imports_inside_functions_and_package_inits(tmp_path, monkeypatch):
    package = tmp_path / "glioseg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from glioseg import c\n")
    (package / "a.py").write_text("def f():\n    from glioseg.sub import b\n")
    (package / "sub" / "b.py").write_text("import os\n")
    (package / "c.py").write_text("")
    (package / "unused.py").write_text("")
    monkeypatch.setattr(codedeps, "PACKAGE_DIR", package)
    entry = tmp_path / "entry.py"
    entry.write_text("from glioseg import a\n")
    assert relative_closure(entry, tmp_path) == [
        "entry.py",
        "glioseg/__init__.py",
        "glioseg/a.py",
        "glioseg/c.py",
        "glioseg/sub/__init__.py",
        "glioseg/sub/b.py",
    ]


def test_a_relative_import_is_refused_rather_than_missed(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("from . import x\n")
    with pytest.raises(ValueError, match="relative import"):
        codedeps.imported_modules(module)


def test_dvc_never_removes_an_output_before_its_stage_validated_params():
    """Every output persists, so `-s`, `--downstream` and experiments cannot lose one to a rejected param."""
    for name, stage in stage_definitions().items():
        for section in ("outs", "metrics", "plots"):
            for entry in stage.get(section, []):
                assert isinstance(entry, dict) and next(iter(entry.values())).get("persist") is True, (name, entry)


def test_the_code_deps_writer_reproduces_dvc_yaml():
    text = (PROJECT / "dvc.yaml").read_text()
    assert codedeps.with_derived_deps(text, PROJECT) == text
    stale = text.replace("      - src/glioseg/pipeline/outputs.py\n", "", 1)
    assert stale != text and codedeps.with_derived_deps(stale, PROJECT) == text
