"""Where the repository is, also from inside `dvc exp run --temp/--queue` copies."""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """DVC_ROOT when DVC sets it (temporary experiment copies live under .dvc/tmp/exps),
    else the nearest folder holding .dvc, else the current folder."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / ".dvc").is_dir():
            return folder
    return here
