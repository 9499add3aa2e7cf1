import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # helpers, aihub_factory

# Nothing in the tests may reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
# Data stages run in this (many-threaded) pytest process: forked workers could deadlock here.
# Tests that check parallel reading pass processes=2 themselves, on a small input.
os.environ.setdefault("MNA_TUNE_DATA_PROCESSES", "1")


@pytest.fixture(scope="session")
def qwen3_tokenizer():
    from mna_tune.qwen_tokenizer import build_qwen3_tokenizer

    return build_qwen3_tokenizer()


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run a stage inside an empty folder (stage paths are relative to the repo root)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def workspace(in_tmp, monkeypatch):
    """An empty repository-like folder with tiny splits; its MLflow store lands inside."""
    from helpers import write_splits

    monkeypatch.setenv("DVC_ROOT", str(in_tmp))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    write_splits(in_tmp)
    return in_tmp
