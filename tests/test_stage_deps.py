"""dvc.yaml's code deps are exactly the files a stage imports: for every stage, the project
modules it can import (the static closure from `mna-tune <stage>`, lazy imports inside
functions included) equal the `src/` files it lists, so an edit reruns the stages that use
the file and no other. tests/test_e2e_dvc.py checks the same against the modules each stage
really imported while `dvc repro` ran it.

The packages also import in one direction only (LAYERS): a package takes from its own
files and the layers below it, never from a package beside it or above it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from helpers import REPO
from mna_tune.cli import STAGES

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


# Modules MLflow loads from a file path ("models from code": registering a version loads the
# pyfunc entry), which no import statement shows. A stage that can register depends on them;
# the layer check reads import statements only (the registry never imports serving).
# The parity certificate runs `mna-tune export` and `mna-tune serve` as the user runs them
# (child processes): what they run certifies the version, so the stage depends on it too.
LOADED_BY_PATH = {
    "mna_tune.registry.registry": {"mna_tune.serving.pyfunc_entry"},
    "mna_tune.evaluation.parity": {
        "mna_tune.__main__",
        "mna_tune.serving.export",
        "mna_tune.serving.server",
        "mna_tune.serving.engine_server",
    },
}


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
            loaded = {parent for module in LOADED_BY_PATH.get(name, ()) for parent in _with_parents(module)}
            todo.extend((imported_by(name) | loaded) - seen)
    return seen


def stage_code(stage: str) -> set[Path]:
    """The source files `mna-tune <stage>` can load."""
    entry = STAGES[stage].split(":")[0]
    return {module_file(name) for name in closure([f"{PACKAGE}.cli", entry])}


def code_deps(stage: str) -> list[Path]:
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    return [REPO / dep for dep in dvc["stages"][stage]["deps"] if dep.startswith("src/")]


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_stage_lists_exactly_the_files_it_imports(stage):
    listed = set(code_deps(stage))
    imported = stage_code(stage)
    missing = sorted(str(path.relative_to(REPO)) for path in imported - listed)
    unused = sorted(str(path.relative_to(REPO)) for path in listed - imported)
    assert missing == [], f"dvc.yaml stage '{stage}' imports these files: list them as deps"
    assert unused == [], f"dvc.yaml stage '{stage}' lists files it never imports: remove them"


def test_a_stage_lists_files_not_folders():
    """A folder dep reruns a stage for any file in it, imported or not."""
    for stage in STAGES:
        folders = [str(dep.relative_to(REPO)) for dep in code_deps(stage) if dep.is_dir()]
        assert folders == [], f"dvc.yaml stage '{stage}' lists folders as code deps"


# Lowest first. The top-level modules are the shared layer; cli is the only way in.
LAYERS = (
    {"shared"},
    {"data", "registry", "engine"},
    {"training", "evaluation"},
    {"serving"},
    {"cli"},
    {"__main__"},
)


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, package) of a project module: mna_tune.serving.ask -> serving's."""
    parts = module.split(".")
    if len(parts) == 1:
        return 0, "shared"  # the package's own __init__
    name = parts[1]
    is_package = SRC.joinpath(PACKAGE, name).is_dir()
    group = name if is_package or name in ("cli", "__main__") else "shared"
    return next(i for i, layer in enumerate(LAYERS) if group in layer), group


def layer_violations(modules: list[str]) -> list[str]:
    found = []
    for module in modules:
        level, group = layer_of(module)
        for target in sorted(imported_by(module)):
            if target == PACKAGE:
                continue
            target_level, target_group = layer_of(target)
            if target_group != group and target_level >= level:
                found.append(f"{module} imports {target} ({target_group} is not below {group})")
    return found


def all_modules() -> list[str]:
    return sorted(
        ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        for path in (SRC / PACKAGE).rglob("*.py")
    )


def test_every_package_is_in_a_layer():
    packages = {path.name for path in (SRC / PACKAGE).iterdir() if (path / "__init__.py").is_file()}
    assert packages <= set().union(*LAYERS)


def test_packages_import_only_the_layers_below_them():
    assert layer_violations(all_modules()) == []


def test_the_layer_check_sees_an_import_from_beside_or_above(tmp_path, monkeypatch):
    """The check can fail: evaluation importing serving (above it) or registry importing
    evaluation (beside training/evaluation, above registry) is reported."""
    real = imported_by
    extra = {
        "mna_tune.evaluation.evaluate": {"mna_tune.serving.pyfunc"},
        "mna_tune.registry.promotion": {"mna_tune.evaluation.scoring"},
    }
    monkeypatch.setitem(globals(), "imported_by", lambda name: real(name) | extra.get(name, set()))
    found = layer_violations(list(extra))
    assert len(found) == 2 and "serving is not below evaluation" in found[0]


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
            heavy = {
                alias.name.split(".")[0]
                for node in ast.walk(tree)
                if isinstance(node, ast.Import)
                for alias in node.names
            } | {
                (node.module or "").split(".")[0]
                for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and not node.level
            }
            assert not heavy & {"torch", "transformers", "mlflow"}, f"{path} imports {heavy}"
