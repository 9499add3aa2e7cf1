"""The `llm` scorer against a real HTTP server on 127.0.0.1 that plays an OpenAI-compatible
chat endpoint and records every request it gets."""

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time

import pytest

from helpers import REPO, FakeChatEndpoint, repo_params, serve_chat
from mna_tune.data.llm_scorer import (
    ENV_API_KEY,
    ENV_BASE_URL,
    ENV_MODEL,
    LlmConfigError,
    LlmScorer,
    LlmScoringError,
    parse_reply,
)
from mna_tune.data.scoring import LexiconScorer, make_scorer
from mna_tune.errors import InputError
from mna_tune.llm_endpoint import safe_url
from mna_tune.params import load_params

SECRET = "sk-test-4f9c1e2d-not-a-real-key"
TEMPLATE = 'Q: {question}\nA: {answer}\n답: {"score": <0~100>, "reason": "<한 줄>"}\n'
QUESTION = re.compile(r"^Q: (.*)$", re.MULTILINE)


class FakeLlm(FakeChatEndpoint):
    """Answers each question with its scripted reply, or a score of 50."""

    def __init__(self):
        super().__init__()
        self.replies: dict[str, str] = {}  # question -> message content

    def reply_for(self, question: str) -> str:
        default = json.dumps({"score": 50, "reason": f"{question} 관련"}, ensure_ascii=False)
        return self.replies.get(question, default)

    def content(self, request: dict) -> str:
        content = self.reply_for(question_of(request))
        if content.startswith("ECHO_AUTH"):  # a broken server that repeats what it was sent
            content = "I got " + request["headers"].get("authorization", "")
        # {authorization} and {url} in a scripted reply: the secrets repeated inside a valid answer
        content = content.replace("{authorization}", request["headers"].get("authorization", ""))
        return content.replace("{url}", self.url)


def question_of(request: dict) -> str:
    return QUESTION.search(request["body"]["messages"][-1]["content"]).group(1)


@pytest.fixture
def server(monkeypatch):
    with serve_chat(FakeLlm(), monkeypatch) as state:
        yield state


@pytest.fixture
def environ(server):
    return {ENV_BASE_URL: server.url + "/v1/", ENV_MODEL: "qwen3-test", ENV_API_KEY: SECRET}


def params_for(tmp_path, template=TEMPLATE, **overrides):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text(template, encoding="utf-8")
    return repo_params(
        filter={
            "scorer": "llm",
            "llm_prompt_path": prompt,
            "llm_cache_path": tmp_path / "cache" / "llm.sqlite",
            **overrides,
        }
    ).filter


def scorer_for(tmp_path, environ, template=TEMPLATE, **overrides) -> LlmScorer:
    return LlmScorer.from_params(params_for(tmp_path, template, **overrides), environ, backoff_s=0.001)


def cached_rows(path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT key, score, reason, model FROM scores ORDER BY reason").fetchall()


ROWS = [("합병이란?", "두 회사가 하나가 되는 것."), ("김치는?", "배추로 만든다."), ("공개매수란?", "장외 매수.")]


def test_scores_and_reasons_are_parsed_in_input_order(tmp_path, server, environ):
    server.replies = {
        "합병이란?": '{"score": 90, "reason": "M&A를 직접 다룬다."}',
        "김치는?": '<think>\n{"score": 100, "reason": "생각 중"}\n</think>\n\n{"score": 0, "reason": "요리"}',
        "공개매수란?": '결과입니다:\n```json\n{"score": "72.5", "reason": "자본시장\n 주제"}\n```\n이상입니다.',
    }
    scores = scorer_for(tmp_path, environ).score_batch(ROWS)
    assert scores == [(90, "M&A를 직접 다룬다."), (0, "요리"), (75, "자본시장 주제")]
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    body = request["body"]
    assert body["model"] == "qwen3-test" and body["temperature"] == 0 and body["max_tokens"] > 0
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert body["messages"][-1]["role"] == "user"
    assert '"score": <0~100>' in body["messages"][-1]["content"]  # JSON braces survive rendering


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"score": 42, "reason": "x"}', (40, "x")),
        ('{"score": 43, "reason": "x"}', (45, "x")),
        ('{"score": 100.0, "reason": "x"}', (100, "x")),
        ('prose {not json} then {"score": 5, "reason": "y"}', (5, "y")),
        ('{"score": 101, "reason": "x"}', None),
        ('{"score": -5, "reason": "x"}', None),
        ('{"score": true, "reason": "x"}', None),
        ('{"score": "높음", "reason": "x"}', None),
        ('{"score": 50}', None),
        ('<think>{"score": 50, "reason": "x"}', None),  # thinking cut off before any answer
        ("점수는 50점입니다", None),
    ],
)
def test_parse_reply(content, expected):
    assert parse_reply(content) == expected


def test_reruns_use_the_cache_and_only_new_rows_are_sent(tmp_path, server, environ):
    first = scorer_for(tmp_path, environ).score_batch(ROWS)
    assert len(server.requests) == 3

    # A fresh scorer (a new run) reads the file; whitespace differences are the same row.
    respaced = [(f"  {question} ", answer.replace(" ", "\n")) for question, answer in ROWS]
    assert scorer_for(tmp_path, environ).score_batch(respaced) == first
    assert len(server.requests) == 3

    scorer_for(tmp_path, environ).score_batch(ROWS + [("실사란?", "기업 조사.")])
    assert len(server.requests) == 4
    assert question_of(server.requests[-1]) == "실사란?"

    rows = cached_rows(tmp_path / "cache" / "llm.sqlite")
    assert [row[1:] for row in rows] == [
        (50, f"{q} 관련", "qwen3-test") for q in sorted(["합병이란?", "김치는?", "공개매수란?", "실사란?"])
    ]


def test_identical_rows_in_one_batch_are_asked_once(tmp_path, server, environ):
    scores = scorer_for(tmp_path, environ).score_batch([ROWS[0], ROWS[1], ROWS[0]])
    assert len(server.requests) == 2 and scores[0] == scores[2]


def test_a_new_prompt_or_model_scores_again(tmp_path, server, environ):
    scorer_for(tmp_path, environ).score_batch(ROWS)
    scorer_for(tmp_path, environ, template=TEMPLATE + "금융 관련성을 평가하라.\n").score_batch(ROWS)
    assert len(server.requests) == 6
    scorer_for(tmp_path, {**environ, ENV_MODEL: "qwen3-other"}).score_batch(ROWS)
    assert len(server.requests) == 9
    assert server.requests[-1]["body"]["model"] == "qwen3-other"


def test_the_key_is_sent_but_never_stored_or_shown(tmp_path, server, environ):
    scorer = scorer_for(tmp_path, environ)
    scorer.score_batch(ROWS[:1])
    assert server.requests[0]["headers"]["authorization"] == f"Bearer {SECRET}"
    assert SECRET.encode() not in (tmp_path / "cache" / "llm.sqlite").read_bytes()
    assert SECRET not in repr(scorer)

    server.replies = {"김치는?": "ECHO_AUTH"}  # the reply repeats the Authorization header
    with pytest.raises(LlmScoringError) as caught:
        scorer.score_batch(ROWS[1:2])
    assert "I got Bearer ***" in str(caught.value) and SECRET not in str(caught.value)

    server.script = [(401, json.dumps({"error": f"bad key {SECRET}"}))]
    with pytest.raises(LlmScoringError) as caught:
        scorer.score_batch(ROWS[2:])
    assert "HTTP 401" in str(caught.value) and ENV_API_KEY in str(caught.value)
    assert SECRET not in str(caught.value)


def test_no_authorization_header_without_a_key(tmp_path, server, environ):
    scorer_for(tmp_path, {ENV_BASE_URL: environ[ENV_BASE_URL], ENV_MODEL: "m"}).score_batch(ROWS[:1])
    assert "authorization" not in server.requests[0]["headers"]


def test_urls_in_messages_lose_their_credentials():
    assert safe_url("https://user:pw@llm.example:8443/v1?token=abc#x") == "https://llm.example:8443/v1"


def test_server_errors_and_rate_limits_are_retried(tmp_path, server, environ):
    server.script = [(500, "boom"), (429, "slow down")]
    assert scorer_for(tmp_path, environ).score_batch(ROWS[:1]) == [(50, "합병이란? 관련")]
    assert len(server.requests) == 3


def test_a_garbage_reply_names_the_row_and_what_came_back(tmp_path, server, environ):
    server.replies = {"김치는?": "죄송하지만 점수를 드릴 수 없습니다. " * 30}
    scorer = scorer_for(tmp_path, environ)
    with pytest.raises(ValueError) as caught:
        scorer.score_batch(ROWS, wheres=["a.zip :: 1.json :: record 0", "a.zip :: 2.json :: record 7", "c"])
    message = str(caught.value)
    assert message.startswith("a.zip :: 2.json :: record 7: ")
    assert "죄송하지만 점수를" in message and len(message) < 600  # quoted, truncated
    assert len(server.requests) == 2 + scorer.client.attempts  # the good rows once, the bad one retried

    # The good rows were kept: once the endpoint behaves, only the failed row is sent.
    server.replies = {}
    scorer_for(tmp_path, environ).score_batch(ROWS)
    assert len(server.requests) == 2 + scorer.client.attempts + 1


def test_a_client_error_is_not_retried(tmp_path, server, environ):
    server.script = [(400, '{"error": "model qwen3-test does not exist"}')]
    with pytest.raises(LlmScoringError, match=r"^row 1 of the batch: .*HTTP 400.*does not exist"):
        scorer_for(tmp_path, environ).score(*ROWS[0])
    assert len(server.requests) == 1


def test_an_unreachable_endpoint_fails_after_retries_without_showing_credentials(tmp_path, environ):
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environ = {**environ, ENV_BASE_URL: f"http://user:hunter2@127.0.0.1:{port}/v1"}
    with pytest.raises(LlmScoringError, match=r"ConnectError") as caught:
        scorer_for(tmp_path, environ).score(*ROWS[0], where="r1")
    message = str(caught.value)
    assert message.startswith(f"r1: no usable score from http://127.0.0.1:{port}/v1 after 4 attempts")
    assert "hunter2" not in message


@pytest.mark.parametrize("url", ["127.0.0.1:8000/v1", "http://127.0.0.1:99999999/v1", "http://user:pw@[::1/v1"])
def test_a_bad_url_is_a_clear_error_that_does_not_quote_it(tmp_path, environ, url):
    with pytest.raises(LlmConfigError, match=ENV_BASE_URL) as caught:
        scorer_for(tmp_path, {**environ, ENV_BASE_URL: url})
    assert "pw" not in str(caught.value) and "8000" not in str(caught.value)


@pytest.mark.parametrize(("missing", "named"), [(ENV_BASE_URL, ENV_BASE_URL), (ENV_MODEL, ENV_MODEL)])
def test_missing_environment_is_a_clear_error(tmp_path, environ, missing, named):
    environ = {name: value for name, value in environ.items() if name != missing}
    with pytest.raises(LlmConfigError, match=named) as caught:
        scorer_for(tmp_path, environ)
    assert isinstance(caught.value, ValueError) and SECRET not in str(caught.value)


def test_make_scorer_builds_the_llm_scorer_from_the_environment(tmp_path, server, environ, monkeypatch):
    params = params_for(tmp_path)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    scorer = make_scorer("llm", params.lexicon_path, None, params)
    assert isinstance(scorer, LlmScorer) and scorer.model == "qwen3-test"
    assert scorer.client.concurrency == params.llm_concurrency
    with pytest.raises(ValueError, match="filter params"):
        make_scorer("llm", params.lexicon_path, None)
    monkeypatch.delenv(ENV_BASE_URL)
    with pytest.raises(LlmConfigError, match=ENV_BASE_URL):
        make_scorer("llm", params.lexicon_path, None, params)


def test_requests_overlap_up_to_the_concurrency(tmp_path, server, environ):
    server.delay_s = 0.2
    rows = [(f"질문 {n}", f"답변 {n}") for n in range(8)]
    started = time.perf_counter()
    scores = scorer_for(tmp_path, environ, llm_concurrency=8).score_batch(rows)
    elapsed = time.perf_counter() - started
    assert [reason for _, reason in scores] == [f"질문 {n} 관련" for n in range(8)]
    assert server.max_in_flight > 1
    assert elapsed < 8 * 0.2 * 0.75  # sequential would take 1.6 s


def test_a_reason_that_echoes_the_key_or_url_is_stored_redacted(tmp_path, server, environ):
    server.replies = {"합병이란?": '{"score": 90, "reason": "got {authorization} at {url}/v1"}'}
    assert scorer_for(tmp_path, environ).score_batch(ROWS[:1]) == [(90, "got Bearer *** at ***")]
    cache = tmp_path / "cache" / "llm.sqlite"
    assert [row[2] for row in cached_rows(cache)] == ["got Bearer *** at ***"]
    for stored in cache.parent.iterdir():  # the database and any WAL file beside it
        assert SECRET.encode() not in stored.read_bytes() and server.url.encode() not in stored.read_bytes()


@pytest.mark.parametrize("damage", ["text", "jsonl", "truncated"])
def test_a_cache_that_is_not_a_sqlite_database_is_one_clear_error(tmp_path, server, environ, damage):
    cache = tmp_path / "cache" / "llm.sqlite"
    if damage == "truncated":
        scorer_for(tmp_path, environ).score_batch(ROWS)
        cache.write_bytes(cache.read_bytes()[:5000])
    else:
        cache.parent.mkdir()
        cache.write_text(
            "hello\n" if damage == "text" else '{"key": "k", "score": 50, "reason": "x"}\n', encoding="utf-8"
        )
    sent = len(server.requests)
    with pytest.raises(InputError, match=r"llm\.sqlite: not a usable score cache .*delete the file to re-score"):
        scorer_for(tmp_path, environ).score_batch(ROWS)
    assert len(server.requests) == sent  # found out before anything was sent


def test_a_read_only_cache_is_one_clear_error(tmp_path, server, environ, monkeypatch):
    scorer_for(tmp_path, environ).score_batch(ROWS[:1])
    # Root may write anything, so the test opens the file read-only, as SQLite itself does
    # when the file or its folder is not writable.
    connect = sqlite3.connect
    monkeypatch.setattr(
        sqlite3, "connect", lambda path, **options: connect(f"file:{path}?mode=ro", uri=True, **options)
    )
    with pytest.raises(InputError, match=r"llm\.sqlite: cannot write the score cache \(attempt to write a readonly"):
        scorer_for(tmp_path, environ).score_batch(ROWS)


def test_a_folder_where_the_cache_file_should_be_is_one_clear_error(tmp_path, server, environ):
    (tmp_path / "cache" / "llm.sqlite").mkdir(parents=True)
    with pytest.raises(InputError, match=r"llm\.sqlite: cannot write the score cache \(unable to open"):
        scorer_for(tmp_path, environ).score_batch(ROWS)


CHILD = """
import sys
from pathlib import Path
from mna_tune.data.llm_scorer import LlmScorer
from mna_tune.llm_endpoint import ChatClient, Endpoint

url, cache, template, first, count = sys.argv[1:]
scorer = LlmScorer(ChatClient(Endpoint(url, "m"), backoff_s=0.001), template, Path(cache))
rows = [(f"질문 {n}", f"답변 {n}") for n in range(int(first), int(first) + int(count))]
print("ready", flush=True)
sys.stdin.readline()  # start together, so both create the file and then write at the same time
scores = scorer.score_batch(rows)
assert [reason for _, reason in scores] == [f"{question} 관련" for question, _ in rows], scores
"""


def test_two_processes_share_one_cache_file(tmp_path, server):
    server.delay_s = 0.005
    cache = tmp_path / "cache" / "llm.sqlite"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, server.url + "/v1", str(cache), TEMPLATE, first, "300"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for first in ("0", "200")
    ]  # rows 200-299 are in both: both write them
    for child in children:
        assert child.stdout.readline() == "ready\n", child.communicate()[1]
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    for child in children:
        _, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
    assert server.max_in_flight > 8  # both were sending at once (each sends at most 8 at a time)
    assert sorted(row[2] for row in cached_rows(cache)) == sorted(f"질문 {n} 관련" for n in range(500))


def test_a_relative_cache_path_lands_under_the_working_directory(in_tmp, server, environ, monkeypatch):
    monkeypatch.delenv("DVC_ROOT", raising=False)
    prompt = in_tmp / "prompt.txt"
    prompt.write_text(TEMPLATE, encoding="utf-8")
    params = repo_params(filter={"scorer": "llm", "llm_prompt_path": prompt}).filter  # params.yaml's cache path
    assert not params.llm_cache_path.is_absolute()
    LlmScorer.from_params(params, environ, backoff_s=0.001).score_batch(ROWS[:1])
    assert len(cached_rows(in_tmp / params.llm_cache_path)) == 1


def test_a_prompt_without_placeholders_is_rejected(tmp_path, environ):
    with pytest.raises(InputError, match=r"lacks the placeholder\(s\) \{answer\}"):
        scorer_for(tmp_path, environ, template="Q: {question}\n")


def test_the_repository_prompt_renders_both_fields():
    from mna_tune.data.llm_scorer import load_template, render_prompt

    template = load_template(REPO / load_params(REPO / "params.yaml").filter.llm_prompt_path)
    rendered = render_prompt(template, "질문 {answer}", "답변")
    assert "질문 {answer}" in rendered and "답변" in rendered and '{"score"' in rendered


def test_other_scorers_score_batches_row_by_row():
    scorer = LexiconScorer.from_tsv(REPO / "data/lexicon/domain_terms.tsv")
    assert scorer.score_batch(ROWS) == [scorer.score(question, answer) for question, answer in ROWS]


def test_the_filter_stage_scores_with_the_llm_and_reruns_send_nothing(tmp_path, server, environ, monkeypatch):
    from mna_tune.data.columnar import read_rows
    from mna_tune.data.filter import run_filter
    from mna_tune.params import FilterPaths
    from mna_tune.workspace import write_jsonl

    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    server.replies = {
        "합병이란?": '{"score": 90, "reason": "M&A 핵심 개념"}',
        "김치는?": '<think>\n음식 질문\n</think>\n{"score": 0, "reason": "무관"}',
    }
    rows = [
        {
            "question": q,
            "answer": a,
            "category": "사회",
            "file": "Other/Other.zip",
            "entry": "/OT.json",
            "record": f"[{i}]",
        }
        for i, (q, a) in enumerate(ROWS)
    ]
    source = tmp_path / "extracted.jsonl"
    paths = FilterPaths(
        kept=tmp_path / "kept.parquet", dropped=tmp_path / "dropped.parquet", summary=tmp_path / "filter.json"
    )
    write_jsonl(source, rows)
    params = params_for(tmp_path, min_score=30, exclude_categories=[])
    metrics = run_filter(params, source, paths)
    kept = list(read_rows(paths.kept))
    assert [(r["question"], r["score"]) for r in kept] == [("합병이란?", 90), ("공개매수란?", 50)]
    assert kept[0]["score_reason"] == "M&A 핵심 개념" and metrics["dropped"]["below_min_score"] == 1
    assert len(server.requests) == 3
    run_filter(params, source, paths)
    assert len(server.requests) == 3  # every row came from the cache
    for path in (paths.kept, paths.dropped, paths.summary, params.llm_cache_path):
        assert SECRET.encode() not in path.read_bytes()
