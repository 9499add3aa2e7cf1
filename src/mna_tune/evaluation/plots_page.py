"""The page template `dvc plots show` and `dvc plots diff` fill (plots.html_template in
.dvc/config): vega, vega-lite and vega-embed inlined, so the page renders with no network.

DVC's own page loads those three scripts from a CDN and stays blank offline. A template
without the `{scripts}` placeholder drops DVC's CDN script tags; this one carries the
libraries itself, bundled by the vl-convert-python package (`vl_convert.javascript_bundle`;
vl-convert, vega, vega-lite and vega-embed are BSD-3-Clause). The page is committed at
.dvc/plots/offline_page.html; after upgrading vl-convert-python, regenerate it with

    python -m mna_tune.evaluation.plots_page

(tests/test_plots.py fails while it is stale).
"""

from __future__ import annotations

import sys
from pathlib import Path

TEMPLATE = Path(".dvc/plots/offline_page.html")
VEGA_LITE = "5.21"  # DVC's templates are vega-lite v5 specs

_PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC plots</title>
    <!-- {provenance} -->
    <!-- Written by `python -m mna_tune.evaluation.plots_page`; do not edit by hand. -->
    <script type="text/javascript">
{bundle}
    </script>
    <style>
        body { font-family: sans-serif; }
        table { border-spacing: 15px; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def provenance() -> str:
    """The library versions the page inlines (its first comment)."""
    from importlib.metadata import version

    import vl_convert as vlc

    return (
        f"Inlined: vega {vlc.get_vega_version()}, vega-lite {VEGA_LITE}, vega-embed {vlc.get_vega_embed_version()} "
        f"(BSD-3-Clause), bundled by vl-convert-python {version('vl-convert-python')} (BSD-3-Clause)."
    )


def page() -> str:
    import vl_convert as vlc

    bundle = vlc.javascript_bundle(vl_version=VEGA_LITE)  # type: ignore[call-arg]  # snippet defaults to None
    # DVC fills the page with str.replace and the browser ends a script at "</script":
    # neither may occur inside the bundle.
    for forbidden in ("{plot_divs}", "{scripts}", "{refresh_tag}", "</script"):
        if forbidden in bundle.lower():
            raise ValueError(f"the vega bundle contains {forbidden!r}: it cannot be inlined as is")
    return _PAGE.replace("{provenance}", provenance()).replace("{bundle}", bundle)  # the bundle last, untouched


def write(path: Path = TEMPLATE) -> Path:
    from ..workspace import atomic_open

    with atomic_open(path) as out:
        out.write(page())
    return path


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else TEMPLATE
    print(f"wrote {write(target)}")
