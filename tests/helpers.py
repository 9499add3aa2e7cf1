"""What several test files need: the repository's params with overrides, tiny splits, a
subprocess environment for the CLI, free ports and waiting for a server."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import yaml

from mna_tune.chat import build_messages
from mna_tune.data.text import content_id
from mna_tune.params import Params, load_params
from mna_tune.workspace import write_jsonl

REPO = Path(__file__).resolve().parents[1]

QA = [
    ("합병이란 무엇인가요?", "두 회사가 하나로 합쳐지는 것입니다."),
    ("공개매수란 무엇인가요?", "장외에서 주식을 사겠다고 공고하는 것입니다."),
    ("실사란 무엇인가요?", "대상 회사를 조사하는 절차입니다."),
    ("영업권이란 무엇인가요?", "인수 대가가 순자산 공정가치를 넘는 부분입니다."),
]


def repo_params(**sections: dict) -> Params:
    """params.yaml of the repository, with some keys of some sections replaced:
    repo_params(filter={"min_score": 0}). Paths stay relative (to the test's folder);
    the lexicon is the repository's."""
    params = load_params(REPO / "params.yaml")
    repository_files = {"lexicon_path": REPO / "data/lexicon/domain_terms.tsv",
                        "llm_prompt_path": REPO / "prompts/llm_relevance.txt"}
    sections = {**sections, "filter": {**repository_files, **sections.get("filter", {})}}
    return params.model_copy(update={name: getattr(params, name).model_copy(update=values)
                                     for name, values in sections.items()})


def tiny_params(**train) -> Params:
    """Quick training on the tiny model: 3 steps of 2 rows unless `train` says otherwise."""
    return repo_params(train={"max_steps": 3, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
                              **train},
                       evaluate={"max_new_tokens": 8, "batch_size": 4})


def with_section(params: Params, section: str, **values) -> Params:
    return params.model_copy(update={section: getattr(params, section).model_copy(update=values)})


def chat_rows(pairs):
    return [{"id": content_id(q, a), "source": "mna", "category": "M&A", "messages": build_messages(q, a)}
            for q, a in pairs]


def write_splits(root: Path) -> None:
    write_jsonl(root / "data/processed/train.jsonl", chat_rows(QA * 2))
    write_jsonl(root / "data/processed/val.jsonl", chat_rows(QA[:2]))
    write_jsonl(root / "data/processed/test.jsonl", chat_rows(QA[2:]))


def write_params(root: Path, params: Params | dict) -> Path:
    data = params.model_dump(mode="json") if isinstance(params, Params) else params
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def cli_env(root: Path, **extra: str) -> dict:
    """The environment for running `mna-tune` in `root` as its own repository: this
    interpreter's scripts first, DVC_ROOT at `root`, no tracking URI from outside."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME")}
    env.update(PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"], DVC_ROOT=str(root),
               HF_HUB_OFFLINE="1", DVC_NO_ANALYTICS="1")
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(ready, timeout_s: float, what: str, alive=lambda: True, interval_s: float = 0.5):
    """Poll `ready()` until it returns something truthy (returned) or raises nothing;
    fail with `what` after `timeout_s`, or at once when `alive()` says the process died."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = ready()
            if value:
                return value
        except OSError:
            pass
        if not alive():
            raise AssertionError(f"{what}: the process ended")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not ready after {timeout_s:.0f} s")
        time.sleep(interval_s)
