"""The README stays short and every link in README.md and docs/ resolves inside the repository."""

import re

import pytest

from helpers import REPO

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_readme_reads_in_five_minutes():
    assert (REPO / "README.md").stat().st_size <= 12_000


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_resolve_inside_the_repository(page):
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path = target.split("#", 1)[0]
        if not path:
            continue
        resolved = (page.parent / path).resolve()
        assert resolved.is_relative_to(REPO) and resolved.exists(), f"{page.name}: broken link {target}"
    assert "../shared" not in page.read_text(encoding="utf-8")


def leaf_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        keys += leaf_keys(value, dotted + ".") if isinstance(value, dict) else [dotted]
    return keys


def test_every_params_key_is_documented():
    """docs/params.md has a row for each key of params.yaml: `section.key`, or the key's
    own name in a row that starts with its section (`lora.r`, `alpha`, `dropout`)."""
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params.pop("paths")  # documented as a table of its own
    rows = [
        line for line in (REPO / "docs/params.md").read_text(encoding="utf-8").splitlines() if line.startswith("| `")
    ]
    undocumented = []
    for key in leaf_keys(params):
        section, _, leaf = key.rpartition(".")
        first_cells = [row.split(" | ")[0] for row in rows]
        if not any(f"`{key}`" in cell or (f"`{section}." in cell and f"`{leaf}`" in cell) for cell in first_cells):
            undocumented.append(key)
    assert undocumented == [], "docs/params.md: add a row for these params.yaml keys"


@pytest.mark.parametrize("script", sorted((REPO / "benchmarks").glob("*.py")), ids=lambda p: p.name)
def test_benchmark_help_shows_how_to_run_it(script):
    """`--help` prints the module's docstring whole (what it measures and the commands), not a
    first line cut mid-sentence."""
    import ast
    import subprocess
    import sys

    doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8")))
    shown = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, check=True).stdout
    assert doc.split("\n\n")[0] in shown and "    .venv/bin/python benchmarks/" in shown
