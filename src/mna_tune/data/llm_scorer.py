"""`llm` relevance scorer: an OpenAI-compatible chat endpoint (e.g. vLLM serving Qwen3) rates
each row 0-100 with a one-line reason, using the prompt template kept in the repository.

The endpoint and its key come from the environment only, never from params, so they cannot
end up in params.yaml, DVC lock files, MLflow or logs. Scores are cached by content hash
(model + prompt text + normalised question and answer) in a JSON Lines file, so reruns
only send the rows that are new.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from ..workspace import project_root
from .errors import InputError
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
    _cache: dict[str, tuple[int, str]] | None = field(default=None, init=False, repr=False)

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
        each result is appended to the cache as it arrives, so an interrupted run keeps them."""
        if wheres is not None and len(wheres) != len(pairs):
            raise ValueError(f"score_batch got {len(pairs)} rows but {len(wheres)} labels")
        cache = self._load_cache()
        keys = [cache_key(self.model, self.template, question, answer) for question, answer in pairs]
        todo: dict[str, int] = {}  # key -> first row index; identical rows are asked once
        for index, key in enumerate(keys):
            if key not in cache and key not in todo:
                todo[key] = index
        if todo:
            self._request_missing(pairs, wheres, todo, cache)
        return [cache[key] for key in keys]

    def _request_missing(
        self, pairs: list[tuple[str, str]], wheres: list[str] | None,
        todo: dict[str, int], cache: dict[str, tuple[int, str]],
    ) -> None:
        import httpx  # only the llm scorer needs it

        def where(index: int) -> str:
            return wheres[index] if wheres is not None else f"row {index + 1} of the batch"

        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        with (
            httpx.Client(timeout=self.timeout_s, limits=limits, headers=self._headers()) as client,
            ThreadPoolExecutor(max_workers=self.concurrency) as pool,
            self.cache_path.open("a", encoding="utf-8") as out,
        ):
            futures: dict[Future, str] = {
                pool.submit(self._ask, client, *pairs[index], where(index)): key for key, index in todo.items()
            }
            first_error: BaseException | None = None
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
                cache[key] = (score, reason)
                out.write(json.dumps({"key": key, "score": score, "reason": reason, "model": self.model},
                                     ensure_ascii=False) + "\n")
                out.flush()
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
        return scored

    def _scrub(self, text: str) -> str:
        # Belt and braces: an endpoint or proxy could echo the key or a credentialed URL back.
        for secret in (self.api_key, self.base_url):
            if secret:
                text = text.replace(secret, "***")
        return text

    def _shown(self, text: str) -> str:
        text = self._scrub(text)
        return repr(text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "…")

    def _load_cache(self) -> dict[str, tuple[int, str]]:
        if self._cache is None:
            self._cache = read_cache(self.cache_path)
        return self._cache


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


def read_cache(path: Path) -> dict[str, tuple[int, str]]:
    """The cached scores. A broken last line is what an interrupted append leaves: it is
    cut off (with a warning) so the next append starts clean, and the row is scored again.
    A broken line anywhere else means the file was damaged otherwise, which is an error."""
    path = Path(path)
    if not path.exists():
        return {}
    raw_lines = path.read_bytes().splitlines(keepends=True)
    last = max((number for number, line in enumerate(raw_lines) if line.strip()), default=-1)
    cache: dict[str, tuple[int, str]] = {}
    for number, line in enumerate(raw_lines):
        if not line.strip():
            continue
        entry = _cache_entry(line)
        if entry is not None:
            cache[entry[0]] = entry[1]
        elif number == last:
            print(f"filter: warning: {path} line {number + 1} is incomplete (interrupted write); "
                  "dropping it, that row will be scored again", file=sys.stderr)
            with path.open("r+b") as handle:
                handle.truncate(sum(len(kept) for kept in raw_lines[:number]))
        else:
            raise InputError(str(path), "not a cache entry {key, score, reason, model}; "
                                        "delete the file to re-score every row", record=f"line {number + 1}")
    _end_with_newline(path)
    return cache


def _end_with_newline(path: Path) -> None:
    # A write cut just before its newline leaves a valid entry that the next append would join.
    with path.open("r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size:
            handle.seek(size - 1)
            if handle.read(1) != b"\n":
                handle.write(b"\n")


def _cache_entry(line: bytes) -> tuple[str, tuple[int, str]] | None:
    try:
        entry = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(entry, dict):
        return None
    key, score, reason = entry.get("key"), entry.get("score"), entry.get("reason")
    if not isinstance(key, str) or type(score) is not int or not 0 <= score <= 100 or not isinstance(reason, str):
        return None
    return key, (score, reason)
