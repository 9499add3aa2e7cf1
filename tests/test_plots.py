"""`dvc plots show` renders offline: the page template (.dvc/plots/offline_page.html) inlines
vega, vega-lite and vega-embed, so the generated page loads no remote script; the eval
chart puts base and adapter side by side per metric (.dvc/plots/base_vs_adapter.json)."""

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from helpers import REPO, cli_env

PAGE = REPO / ".dvc/plots/offline_page.html"
CHART = REPO / ".dvc/plots/base_vs_adapter.json"
SCORES = """metric,base,adapter
rougeL_f1,0.182,0.341
chrf,21.4,33.9
korean_only_share,0.62,0.97
domain_term_precision,0.44,0.71
judge_rubric_mean,2.1,3.6
"""
BASE_GREY, ADAPTER_BLUE = (0x9A, 0xA0, 0xA6), (0x1A, 0x73, 0xE8)  # the chart's colours


class Scripts(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources: list[str | None] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self.sources.append(attrs.get("src"))
        if tag in ("link", "img", "iframe") and (attrs.get("href") or attrs.get("src")):
            self.links.append(attrs.get("href") or attrs.get("src"))


def scripts_of(html: str) -> Scripts:
    parser = Scripts()
    parser.feed(html)
    return parser


def test_the_page_template_carries_its_scripts_and_dvc_placeholders():
    html = PAGE.read_text(encoding="utf-8")
    found = scripts_of(html)
    assert found.sources == [None] and found.links == []  # one inline script, nothing fetched
    assert "{plot_divs}" in html and "{refresh_tag}" in html
    assert "{scripts}" not in html  # without it DVC adds no CDN script tags
    assert "window.vegaEmbed=" in html and 'charset="utf-8"' in html
    assert (REPO / ".dvc/config").read_text().count("html_template = plots/offline_page.html") == 1


def test_the_page_is_what_the_installed_package_bundles():
    pytest.importorskip("vl_convert", reason="vl-convert-python (the test extra) bundles the page")
    from mna_tune.evaluation.plots_page import page

    assert PAGE.read_text(encoding="utf-8") == page(), (
        "stale: run `python -m mna_tune.evaluation.plots_page` after changing vl-convert-python"
    )


def test_the_eval_plot_uses_the_side_by_side_template():
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]["evaluate"]
    (props,) = [p for plot in stage["plots"] for p in plot.values()]
    assert props["template"] == "base_vs_adapter" and props["y"] == "metric"
    chart = json.loads(CHART.read_text(encoding="utf-8"))
    assert chart["data"] == {"values": "<DVC_METRIC_DATA>"}
    assert {"fold": ["base", "adapter"], "as": ["model", "score"]} in chart["transform"]
    assert chart["resolve"]["scale"]["x"] == "independent"  # chrF (0-100) beside shares (0-1)


@pytest.fixture(scope="module")
def plots_page(tmp_path_factory) -> Path:
    """`dvc plots show` in a fresh repository with the project's templates and config and
    the evaluate stage's plot definition."""
    root = tmp_path_factory.mktemp("plots_repo")
    env = cli_env(root)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True, env=env)
    subprocess.run(["dvc", "init", "-q"], cwd=root, check=True, env=env)
    shutil.copytree(REPO / ".dvc/plots", root / ".dvc/plots")
    with (root / ".dvc/config").open("a", encoding="utf-8") as config:
        config.write("[plots]\n    html_template = plots/offline_page.html\n")
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]["evaluate"]
    (props,) = [p for plot in stage["plots"] for p in plot.values()]
    (root / "plots").mkdir()
    (root / "plots/eval_scores.csv").write_text(SCORES, encoding="utf-8")
    dvc = {"stages": {"evaluate": {"cmd": "true", "plots": [{"plots/eval_scores.csv": props}]}}}
    (root / "dvc.yaml").write_text(yaml.safe_dump(dvc), encoding="utf-8")
    done = subprocess.run(
        ["dvc", "plots", "show", "-o", "out"], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return root / "out/index.html"


def test_dvc_plots_show_writes_a_page_that_references_no_remote_script(plots_page):
    html = plots_page.read_text(encoding="utf-8")
    found = scripts_of(html)
    assert all(source is None for source in found.sources) and found.links == []
    assert "cdn.jsdelivr" not in html and "vegaEmbed('#" in html
    assert '"fold"' in html and "judge_rubric_mean" in html  # the side-by-side chart with our rows


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium (apt-get install chromium)")
def test_the_chart_renders_offline_in_chromium(plots_page, tmp_path):
    """Headless Chromium with every remote host unreachable draws both models' bars."""
    from PIL import Image

    shot = tmp_path / "plots.png"
    subprocess.run(
        [
            "chromium",
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--proxy-server=127.0.0.1:9",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--window-size=900,900",
            "--virtual-time-budget=5000",
            f"--screenshot={shot}",
            plots_page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    pixels = {colour for _, colour in Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 24)}
    assert BASE_GREY in pixels and ADAPTER_BLUE in pixels
