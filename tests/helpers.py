"""What several test files need: the repository's params with overrides, tiny splits, a
subprocess environment for the CLI, free ports, waiting for a server, and a fake
OpenAI-compatible chat endpoint on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from mna_tune.chat import build_messages
from mna_tune.data.text import content_id
from mna_tune.params import Params, ParityParams, load_params
from mna_tune.workspace import write_jsonl

REPO = Path(__file__).resolve().parents[1]
ENGINE_PYTHON = REPO / ".venv-engine" / "bin" / "python"  # made by `make engine`
# Engine tests also carry @pytest.mark.engine (make test-fast leaves them out).
needs_engine = pytest.mark.skipif(
    not ENGINE_PYTHON.is_file() and not os.environ.get("MNA_TUNE_ENGINE_PYTHON"),
    reason="no engine environment: make engine",
)

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
    repository_files = {
        "lexicon_path": REPO / "data/lexicon/domain_terms.tsv",
        "llm_prompt_path": REPO / "prompts/llm_relevance.txt",
    }
    sections = {**sections, "filter": {**repository_files, **sections.get("filter", {})}}
    return params.model_copy(
        update={name: getattr(params, name).model_copy(update=values) for name, values in sections.items()}
    )


def tiny_params(**train) -> Params:
    """Quick training on the tiny model: 3 steps of 2 rows unless `train` says otherwise."""
    return repo_params(
        train={"max_steps": 3, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1, **train},
        # no probe, no parity certificate (tests/test_parity.py turns them on): seconds, not a minute
        evaluate={"max_new_tokens": 8, "batch_size": 4, "probes": 0, "parity": ParityParams(test_rows=0)},
    )


def with_section(params: Params, section: str, **values) -> Params:
    return params.model_copy(update={section: getattr(params, section).model_copy(update=values)})


def chat_rows(pairs):
    return [
        {"id": content_id(q, a), "source": "mna", "category": "M&A", "messages": build_messages(q, a)} for q, a in pairs
    ]


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
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME")
    }
    env.update(
        PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
        DVC_ROOT=str(root),
        HF_HUB_OFFLINE="1",
        DVC_NO_ANALYTICS="1",
    )
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


# ---- a fake OpenAI-compatible chat endpoint ----


class FakeChatEndpoint:
    """Records every request ({path, headers, body}) and answers the scripted (status, body)
    pairs first, in order, then 200 with `content(request)` as the assistant message, after
    `delay_s`. Subclasses say what the content is."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.script: list[tuple[int, str]] = []
        self.delay_s = 0.0
        self.in_flight = self.max_in_flight = 0
        self.url = ""

    def content(self, request: dict) -> str:
        raise NotImplementedError

    def respond(self, request: dict) -> tuple[int, str]:
        with self.lock:
            if self.script:
                return self.script.pop(0)
        message = {"role": "assistant", "content": self.content(request)}
        return 200, json.dumps({"choices": [{"index": 0, "message": message}]})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # the default backlog of 5 drops concurrent connects (1 s SYN retry)


def _handler(state: FakeChatEndpoint):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            request = {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
            with state.lock:
                state.requests.append(request)
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
            try:
                time.sleep(state.delay_s)
                status, payload = state.respond(request)
            finally:
                with state.lock:
                    state.in_flight -= 1
            data = payload.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):  # keep pytest output clean
            pass

    return Handler


@contextlib.contextmanager
def serve_chat(state: FakeChatEndpoint, monkeypatch) -> Iterator[FakeChatEndpoint]:
    """`state` served on a free port of 127.0.0.1 (its `url`), never through a proxy."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    httpd = _Server(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


# ---- a fake LLM judge: reads the repository's prompts, answers by the requested schema ----


def _between(text: str, start: str, end: str | None) -> str:
    tail = text.split(start, 1)[1]
    return (tail.split(end, 1)[0] if end else tail).strip("\n")


def fields_of(kind: str, prompt: str) -> dict:
    """What the repository's prompts put where (the fake reads its own prompt, not a reply)."""
    question = _between(prompt, "질문:\n", "\n\n참고 답변:\n")
    if kind == "pairwise":
        return {
            "question": question,
            "a": _between(prompt, "\n답변 A:\n", "\n\n답변 B:\n"),
            "b": _between(prompt, "\n답변 B:\n", None),
        }
    return {"question": question, "answer": _between(prompt, "\n답변:\n", None)}


def prefer_adapter(kind, fields):
    if kind == "pairwise":
        winner = "A" if "어댑터" in fields["a"] else "B" if "어댑터" in fields["b"] else "tie"
        return {"reason": f"{winner} 쪽이 더 정확합니다.", "winner": winner}
    good = "어댑터" in fields["answer"]
    return {
        "reason": "좋은 답변" if good else "부족한 답변",
        "accuracy": 4 if good else 2,
        "korean": 5 if good else 3,
        "terminology": 3 if good else 1,
        "completeness": 4 if good else 2,
    }


class FakeJudge(FakeChatEndpoint):
    """Answers by the schema each request names, with the policy a test picks."""

    def __init__(self):
        super().__init__()
        self.policy = prefer_adapter

    def content(self, request: dict) -> str:
        body = request["body"]
        kind = body["response_format"]["json_schema"]["name"].removesuffix("_verdict")
        content = self.policy(kind, fields_of(kind, body["messages"][-1]["content"]))
        return content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)


def readme_command(prefix: str) -> list[str]:
    """The README's first command line starting with `prefix`, without its comment."""
    import shlex

    readme = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    return next(shlex.split(line.split("  #")[0]) for line in readme if line.startswith(prefix))


# ---------------------------------------------------------------- one table of bad requests

ASKED = "합병이란 무엇인가요?"


def _chat(**fields) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": ASKED}], "max_tokens": 6, **fields}).encode()


def _messages(*messages) -> bytes:
    return json.dumps({"messages": list(messages)}).encode()


# (raw body, the `param` the 400 names, label): every server the project ships refuses each
# with 400 in OpenAI's error shape (tests/test_server.py in-process, tests/test_engine_server.py
# against `serve` and `serve --engine vllm` side by side).
BAD_REQUEST_CASES = [
    (_messages({"role": "hacker", "content": "x"}), "messages[0].role", "unknown role"),
    (_messages(), "messages", "no messages"),
    (_messages({"role": "system", "content": "x"}), "messages", "system only"),
    (_messages({"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}), "messages", "assistant last"),
    (_messages({"role": "tool", "content": "q"}), "messages[0].role", "tool role"),
    (_messages({"role": "user", "content": "q", "name": "bob"}), "messages[0].name", "message name"),
    (json.dumps({"max_tokens": 5}).encode(), "messages", "messages missing"),
    (_chat(max_tokens=-5), "max_tokens", "negative max_tokens"),
    (_chat(max_tokens=0), "max_tokens", "zero max_tokens"),
    (_chat(max_tokens=1_000_000_000), "max_tokens", "max_tokens over the cap"),
    (_chat(max_tokens=None, max_completion_tokens=100_000), "max_completion_tokens", "max_completion over cap"),
    (_chat(max_completion_tokens=7), "max_tokens", "two different limits"),
    (_chat(n=5), "n", "n"),
    (_chat(tools=[{"type": "function", "function": {"name": "f"}}]), "tools", "tools"),
    (_chat(logprobs=True), "logprobs", "logprobs"),
    (_chat(presence_penalty=0.5), "presence_penalty", "presence_penalty"),
    (_chat(response_format={"type": "json_object"}), "response_format", "response_format"),
    (_chat(frobnicate=1), "frobnicate", "unknown field"),
    (_chat(repetition_penalty=1.5), "repetition_penalty", "vLLM's own field"),
    (_chat(temperature=3), "temperature", "temperature too high"),
    (_chat(top_p=0), "top_p", "top_p zero"),
    (_chat(stop=["a", "b", "c", "d", "e"]), "stop", "five stops"),
    (_chat(stop=5), "stop", "stop a number"),
    (_chat(stream_options={"include_usage": True}), "stream_options", "stream_options without stream"),
    (_chat(chat_template_kwargs={"foo": 1}), "chat_template_kwargs.foo", "chat_template_kwargs.foo"),
    (_chat(max_tokens="10"), "max_tokens", "max_tokens a string"),
    (_chat(max_tokens=True), "max_tokens", "max_tokens true"),
    (_chat(temperature="0.5"), "temperature", "temperature a string"),
    (_chat(top_p="0.5"), "top_p", "top_p a string"),
    (_chat(seed="1"), "seed", "seed a string"),
    (_chat(stream="true"), "stream", "stream a string"),
    (
        _messages({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}),
        "messages[0].content[0]",
        "image part",
    ),
    (_messages({"role": "user", "content": []}), "messages[0].content", "no parts"),
    (_messages({"role": "user", "content": [{"type": "text", "text": ""}]}), "messages[0].content", "empty text part"),
    (b'{"messages": [{"role": "user", "content": "\\ud800x"}]}', "messages[0].content", "lone surrogate"),
    (_messages({"role": "user", "content": ""}), "messages[0].content", "empty question"),
    (_messages({"role": "user", "content": "   "}), "messages[0].content", "blank question"),
    (_messages({"role": "user", "content": "\u200b\u200b"}), "messages[0].content", "zero-width question"),
    (b"[" * 1500 + b"]" * 1500, None, "JSON nested 1,500 deep"),
    (b"{not json", None, "not JSON"),
]
