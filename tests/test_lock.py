"""The committed dvc.lock describes the committed code and params: the metrics, plots and
reports in git were made by what is in git. Read from the last commit (not the working
tree), so editing params.yaml or code for an experiment does not fail the suite; a commit
that changes a stage's code or params without `dvc repro` does."""

from __future__ import annotations

import functools
import hashlib
import subprocess

import yaml

from helpers import REPO
from mna_tune.workspace import _lookup as lookup  # the stage guard's own reading of a dotted params key


@functools.cache  # stages share most of their code files
def committed(path: str) -> bytes:
    return subprocess.run(["git", "show", f"HEAD:{path}"], cwd=REPO, capture_output=True, check=True).stdout


def stale_entries(lock: dict, params: dict, read) -> list[str]:
    """Every file dep in git whose bytes, and every params value whose value, differ from the
    lock. Other stages' outputs are DVC's to check; folder deps (md5 ending `.dir`) are data
    hashed by DVC from a listing: both skipped."""
    outputs = {out["path"] for stage in lock["stages"].values() for out in stage.get("outs", [])}
    stale = []
    for name, stage in lock["stages"].items():
        for dep in stage.get("deps", []):
            if dep["path"] in outputs or dep["md5"].endswith(".dir"):
                continue
            if hashlib.md5(read(dep["path"])).hexdigest() != dep["md5"]:
                stale.append(f"{name}: {dep['path']}")
        for key, value in stage.get("params", {}).get("params.yaml", {}).items():
            if lookup(params, key) != value:
                stale.append(f"{name}: params {key}")
    return stale


def test_the_committed_lock_matches_the_committed_code_and_params():
    lock = yaml.safe_load(committed("dvc.lock"))
    params = yaml.safe_load(committed("params.yaml"))
    stale = stale_entries(lock, params, committed)
    assert not stale, f"dvc.lock is behind {stale}: run `dvc repro` and commit dvc.lock with its outputs"


def test_an_edit_without_repro_is_named():
    lock = yaml.safe_load(committed("dvc.lock"))
    params = yaml.safe_load(committed("params.yaml"))
    params["train"]["learning_rate"] *= 2

    def edited(path: str) -> bytes:
        return committed(path) + (b"\n" if path == "src/mna_tune/cli.py" else b"")

    stale = stale_entries(lock, params, edited)
    assert [entry for entry in stale if "params" in entry] == ["train: params train"]  # evaluate reads only train.seed
    assert {f"{stage}: src/mna_tune/cli.py" for stage in lock["stages"]} <= set(stale)
