"""`llm` relevance scorer: an OpenAI-compatible chat endpoint (e.g. vLLM serving Qwen3) rates
each row 0-100 with a one-line reason, using the prompt template kept in the repository.

The endpoint and its key come from the environment only, never from params, so they cannot
end up in params.yaml, DVC lock files, MLflow or logs. Scores are cached by content hash
(model + prompt text + normalised question and answer) in a SQLite file, so reruns only
send the rows that are new.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import sqlite3
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import InputError
from ..workspace import project_root
from .text import match_key

if TYPE_CHECKING:
    import httpx

    from ..params import FilterParams

ENV_BASE_URL = "MNA_TUNE_LLM_BASE_URL"
ENV_MODEL = "MNA_TUNE_LLM_MODEL"
ENV_API_KEY = "MNA_TUNE_LLM_API_KEY"

_PLACEHOLDER = re.compile(r"\{(question|answer)\}")
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)
_SHOWN_CHARS = 200  # how much of a bad reply an error message quotes

# Queued DVC experiments run in parallel and share one cache file: a writer waits up to
# _LOCK_WAIT_S for another's commit instead of failing with "database is locked".
_LOCK_WAIT_S = 30.0
_LOOKUP_CHUNK = 500  # keys per SELECT ... IN (...), well below SQLite's bound-parameter limit
_SCHEMA = """CREATE TABLE IF NOT EXISTS scores (
    key TEXT PRIMARY KEY,
    score INTEGER NOT NULL CHECK (score BETWEEN 0 AND 100),
    reason TEXT NOT NULL,
    model TEXT NOT NULL)"""


class LlmConfigError(ValueError):
    """The `llm` scorer is selected but the environment does not say where the endpoint is."""


class LlmScoringError(ValueError):
    """A row could not be scored: the message names the row and quotes what came back."""


class _Retryable(Exception):
    """One failed attempt worth repeating (transport error, 429, 5xx, unparseable reply)."""


def safe_url(url: str) -> str:
    """The URL without user info, query or fragment, so it can be named in messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def render_prompt(template: str, question: str, answer: str) -> str:
    # One pass, so a question that itself contains "{answer}" is not substituted again;
    # no str.format, so the braces of the JSON example survive.
    values = {"question": question, "answer": answer}
    return _PLACEHOLDER.sub(lambda found: values[found.group(1)], template)


def cache_key(model: str, template: str, question: str, answer: str) -> str:
    parts = (model, template, match_key(question), match_key(answer))
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


def _first_json_object(text: str) -> dict | None:
    decoder = json.JSONDecoder(strict=False)  # models do put raw line breaks inside strings
    for start in (index for index, char in enumerate(text) if char == "{"):
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _as_score(value: Any) -> int | None:
    if isinstance(value, bool):  # bool is an int subclass; `true` is no score
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 100:
        return None
    return int(math.floor(value / 5 + 0.5) * 5)  # nearest step of 5, halves up


def parse_reply(content: str) -> tuple[int, str] | None:
    """(score, one-line reason) from the model's text, or None when it holds no valid answer."""
    text = _THINK_BLOCK.sub("", content)
    if "</think>" in text:  # the template may have opened <think> in the prompt itself
        text = text.rsplit("</think>", 1)[1]
    text = text.split("<think>", 1)[0]  # thinking cut off by max_tokens holds no answer
    found = _first_json_object(text)
    if found is None:
        return None
    score, reason = _as_score(found.get("score")), found.get("reason")
    if score is None or not isinstance(reason, str):
        return None
    return score, " ".join(reason.split())


@dataclass(eq=False)
class LlmScorer:
    base_url: str = field(repr=False)  # may carry credentials; messages use safe_url()
    model: str
    template: str = field(repr=False)
    cache_path: Path
    concurrency: int = 8
    timeout_s: float = 60.0
    api_key: str | None = field(default=None, repr=False)
    attempts: int = 4
    backoff_s: float = 1.0  # sleeps backoff_s * 2**n between attempts; tests make it tiny
    max_tokens: int = 128

    @classmethod
    def from_params(
        cls, params: FilterParams, environ: Mapping[str, str] = os.environ, *, backoff_s: float = 1.0
    ) -> "LlmScorer":
        base_url = environ.get(ENV_BASE_URL, "").strip().rstrip("/")
        model = environ.get(ENV_MODEL, "").strip()
        if not base_url:
            raise LlmConfigError(f"filter.scorer is 'llm' but {ENV_BASE_URL} is not set "
                                 "(e.g. http://127.0.0.1:8000/v1 for a local vLLM server)")
        _check_url(base_url)
        if not model:
            raise LlmConfigError(f"filter.scorer is 'llm' but {ENV_MODEL} is not set "
                                 "(the model name the endpoint serves, e.g. Qwen/Qwen3-8B)")
        return cls(
            base_url=base_url,
            model=model,
            template=load_template(params.llm_prompt_path),
            # under the repository root, so `dvc exp run --temp/--queue` copies share one cache
            cache_path=Path(params.llm_cache_path) if Path(params.llm_cache_path).is_absolute()
            else project_root() / params.llm_cache_path,
            concurrency=params.llm_concurrency,
            timeout_s=params.llm_timeout_s,
            api_key=environ.get(ENV_API_KEY, "").strip() or None,
            backoff_s=backoff_s,
        )

    @property
    def endpoint(self) -> str:
        return self.base_url + "/chat/completions"

    def score(self, question: str, answer: str, where: str | None = None) -> tuple[int, str]:
        return self.score_batch([(question, answer)], None if where is None else [where])[0]

    def score_batch(
        self, pairs: list[tuple[str, str]], wheres: list[str] | None = None
    ) -> list[tuple[int, str]]:
        """Scores in input order. Cached rows cost nothing; the rest go out concurrently and
        each result is committed to the cache as it arrives, so an interrupted run keeps them."""
        if wheres is not None and len(wheres) != len(pairs):
            raise ValueError(f"score_batch got {len(pairs)} rows but {len(wheres)} labels")
        keys = [cache_key(self.model, self.template, question, answer) for question, answer in pairs]
        with open_cache(self.cache_path) as db:
            cache = _lookup(db, keys)
            todo: dict[str, int] = {}  # key -> first row index; identical rows are asked once
            for index, key in enumerate(keys):
                if key not in cache and key not in todo:
                    todo[key] = index
            if todo:
                self._request_missing(pairs, wheres, todo, cache, db)
        return [cache[key] for key in keys]

    def _request_missing(
        self, pairs: list[tuple[str, str]], wheres: list[str] | None,
        todo: dict[str, int], cache: dict[str, tuple[int, str]], db: sqlite3.Connection,
    ) -> None:
        import httpx  # only the llm scorer needs it

        def where(index: int) -> str:
            return wheres[index] if wheres is not None else f"row {index + 1} of the batch"

        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        with (
            httpx.Client(timeout=self.timeout_s, limits=limits, headers=self._headers()) as client,
            ThreadPoolExecutor(max_workers=self.concurrency) as pool,
        ):
            futures: dict[Future, str] = {
                pool.submit(self._ask, client, *pairs[index], where(index)): key for key, index in todo.items()
            }
            first_error: BaseException | None = None
            try:
                # Results are written here, in the thread that owns the connection.
                for future in as_completed(futures):
                    if future.cancelled():
                        continue
                    error = future.exception()
                    if error is not None:
                        if first_error is None:  # stop sending, but keep what already came back
                            first_error = error
                            for pending in futures:
                                pending.cancel()
                        continue
                    key, (score, reason) = futures[future], future.result()
                    # Autocommit: each row is its own transaction, kept even if the run dies next.
                    db.execute("INSERT OR REPLACE INTO scores (key, score, reason, model) VALUES (?, ?, ?, ?)",
                               (key, score, reason, self.model))
                    cache[key] = (score, reason)
            finally:
                # A failed write or Ctrl-C must not wait for every queued request to be sent.
                for pending in futures:
                    pending.cancel()
            if first_error is not None:
                raise first_error

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _body(self, question: str, answer: str) -> dict:
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": render_prompt(self.template, question, answer)}],
            "temperature": 0,
            "max_tokens": self.max_tokens,
            # Qwen3 would otherwise think first and may run out of tokens before the JSON.
            "chat_template_kwargs": {"enable_thinking": False},
        }

    def _ask(self, client: httpx.Client, question: str, answer: str, where: str) -> tuple[int, str]:
        body = self._body(question, answer)
        last = ""
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                return self._attempt(client, body, where)
            except _Retryable as failure:
                last = str(failure)
        raise LlmScoringError(f"{where}: no usable score from {safe_url(self.base_url)} after "
                              f"{self.attempts} attempts; last: {last}")

    def _attempt(self, client: httpx.Client, body: dict, where: str) -> tuple[int, str]:
        import httpx

        try:
            response = client.post(self.endpoint, json=body)
        except httpx.TransportError as exc:  # connection refused, reset, timeout
            raise _Retryable(f"{type(exc).__name__}: {self._scrub(str(exc))}") from None
        status = response.status_code
        if status == 429 or status >= 500:
            raise _Retryable(f"HTTP {status}: {self._shown(response.text)}")
        if status >= 400:
            raise LlmScoringError(f"{where}: {safe_url(self.base_url)} answered HTTP {status}"
                                  f"{_hint(status)}: {self._shown(response.text)}")
        content = _reply_content(response)
        scored = parse_reply(content) if content is not None else None
        if scored is None:
            raise _Retryable("no JSON object with an integer 'score' in 0..100 and a string 'reason' "
                             f"in the reply: {self._shown(content if content is not None else response.text)}")
        score, reason = scored
        return score, self._scrub(reason)  # the reason is stored and ends up in the filter outputs

    def _scrub(self, text: str) -> str:
        # Belt and braces: an endpoint or proxy could echo the key or a credentialed URL back.
        for secret in (self.api_key, self.base_url):
            if secret:
                text = text.replace(secret, "***")
        return text

    def _shown(self, text: str) -> str:
        text = self._scrub(text)
        return repr(text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "…")


def _check_url(url: str) -> None:
    import httpx

    try:
        scheme = urlsplit(url).scheme
        httpx.URL(url)
        safe_url(url)  # urlsplit checks the port only when asked for it
    except (httpx.InvalidURL, ValueError):
        # The parsers' own messages may quote the URL, and with it a password.
        raise LlmConfigError(f"{ENV_BASE_URL} is not a valid URL") from None
    if scheme not in ("http", "https"):
        raise LlmConfigError(f"{ENV_BASE_URL} must start with http:// or https://")


def _hint(status: int) -> str:
    if status in (401, 403):
        return f" (check {ENV_API_KEY})"
    if status == 404:
        return f" (check {ENV_BASE_URL}, usually ending in /v1, and {ENV_MODEL})"
    return ""


def _reply_content(response: httpx.Response) -> str | None:
    try:
        content = response.json()["choices"][0]["message"]["content"]
    except (ValueError, LookupError, TypeError):
        return None
    return content if isinstance(content, str) else None


def load_template(path: Path) -> str:
    try:
        template = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(str(path), "prompt file not found (filter.llm_prompt_path)") from None
    missing = [name for name in ("{question}", "{answer}") if name not in template]
    if missing:
        raise InputError(str(path), f"the prompt lacks the placeholder(s) {', '.join(missing)}")
    return template


@contextlib.contextmanager
def open_cache(path: Path) -> Iterator[sqlite3.Connection]:
    """The score cache, created if missing. Any SQLite failure while it is open, here or in
    the caller's block, becomes one InputError naming the file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: autocommit, so no transaction stays open between statements.
        db = sqlite3.connect(path, timeout=_LOCK_WAIT_S, isolation_level=None)
    except (OSError, sqlite3.Error) as exc:
        raise _cache_error(path, exc) from None
    try:
        _use_wal(db)
        db.execute(_SCHEMA)
        yield db
    except sqlite3.Error as exc:
        raise _cache_error(path, exc) from None
    finally:
        db.close()


def _use_wal(db: sqlite3.Connection) -> None:
    # WAL: readers never block the writer, and the mode sticks to the file. Switching a new
    # file to it needs the file to itself, and there SQLite answers "locked" at once instead of
    # waiting out the timeout, so two processes creating the cache together wait here by hand.
    deadline = time.monotonic() + _LOCK_WAIT_S
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _lookup(db: sqlite3.Connection, keys: list[str]) -> dict[str, tuple[int, str]]:
    unique = list(dict.fromkeys(keys))
    found: dict[str, tuple[int, str]] = {}
    for start in range(0, len(unique), _LOOKUP_CHUNK):
        chunk = unique[start:start + _LOOKUP_CHUNK]
        rows = db.execute(f"SELECT key, score, reason FROM scores WHERE key IN ({', '.join('?' * len(chunk))})",
                          chunk).fetchall()
        found.update((key, (score, reason)) for key, score, reason in rows)
    return found


def _cache_error(path: Path, exc: Exception) -> InputError:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary code; OSError has none
    if code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_ERROR):
        # SQLITE_ERROR here means a database with some other table layout.
        reason = f"not a usable score cache ({exc}); delete the file to re-score every row"
    elif code == sqlite3.SQLITE_BUSY:
        reason = f"score cache still locked by another process after {_LOCK_WAIT_S:.0f} s"
    else:  # read-only file or folder, a folder in the file's place, a full disk
        reason = f"cannot write the score cache ({exc}); the file and its folder must be writable"
    return InputError(str(path), reason)
