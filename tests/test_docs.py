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
