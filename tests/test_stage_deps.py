"""dvc.yaml's code deps cannot drift from the imports: for every stage, each project module
it can import (the static closure from `mna-tune <stage>`, lazy imports inside functions
included) is covered by one of the stage's deps, and every code dep it lists is imported.
tests/test_e2e_dvc.py checks the same against the modules each stage really imported
while `dvc repro` ran it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from mna_tune.cli import STAGES

from helpers import REPO

SRC = REPO / "src"
PACKAGE = "mna_tune"


def module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _with_parents(name: str) -> set[str]:
    """Importing a.b.c runs a/__init__ and a/b/__init__ too."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def imported_by(name: str) -> set[str]:
    """Project modules that module `name` imports anywhere in its source."""
    path = module_file(name)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            if target.split(".")[0] == PACKAGE and module_file(target) is not None:
                found |= _with_parents(target)
    return found


def closure(entries: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = [module for entry in entries for module in _with_parents(entry)]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(imported_by(name) - seen)
    return seen


def stage_code(stage: str) -> set[Path]:
    """The source files `mna-tune <stage>` can load."""
    entry = STAGES[stage].split(":")[0]
    return {module_file(name) for name in closure([f"{PACKAGE}.cli", entry])}


def code_deps(stage: str) -> list[Path]:
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    return [REPO / dep for dep in dvc["stages"][stage]["deps"] if dep.startswith("src/")]


def covered(path: Path, deps: list[Path]) -> bool:
    return any(path == dep or dep in path.parents for dep in deps)


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_module_a_stage_imports_is_a_dep(stage):
    deps = code_deps(stage)
    missing = sorted(str(path.relative_to(REPO)) for path in stage_code(stage) if not covered(path, deps))
    assert missing == [], f"dvc.yaml stage '{stage}' must list these (or their folder) as deps"


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_code_dep_of_a_stage_is_imported(stage):
    code = stage_code(stage)
    unused = [str(dep.relative_to(REPO)) for dep in code_deps(stage) if not any(covered(p, [dep]) for p in code)]
    assert unused == [], f"dvc.yaml stage '{stage}' lists code it never imports"


def test_the_closure_sees_lazy_and_relative_imports():
    """The check can fail: train reaches its trainer module by a relative import, the
    registry only from inside a function, and never the data stages."""
    train = stage_code("train")
    assert SRC / "mna_tune/training/trainer.py" in train
    assert SRC / "mna_tune/registry/tracking.py" in train  # imported inside a function
    assert not any("data" in path.relative_to(SRC).parts for path in train)


def test_data_stages_import_no_torch_transformers_or_mlflow():
    for stage in ("extract", "filter", "merge"):
        for path in stage_code(stage):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            heavy = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                     for alias in node.names} | {(node.module or "").split(".")[0] for node in ast.walk(tree)
                                                 if isinstance(node, ast.ImportFrom) and not node.level}
            assert not heavy & {"torch", "transformers", "mlflow"}, f"{path} imports {heavy}"
