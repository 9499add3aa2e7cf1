"""An OpenAI-compatible chat endpoint as the `llm` scorer (filter) and the LLM judge
(evaluate) use it: where it is (from the environment only, never from params, so it cannot
end up in params.yaml, DVC lock files or MLflow), many prompts asked concurrently with
retries, and a SQLite cache keyed by content hash in which every answer is committed as it
arrives, so an interrupted run keeps what already came back.

The key and a credentialed URL never reach a message, the cache or a stored reason: every
text from the endpoint goes through `ChatClient.scrub`.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit, urlunsplit

from .errors import InputError

if TYPE_CHECKING:
    import httpx

T = TypeVar("T")
R = TypeVar("R")

SHOWN_CHARS = 200  # how much of a bad reply an error message quotes
# Queued DVC experiments run in parallel and share one cache file: a writer waits up to
# LOCK_WAIT_S for another's commit instead of failing with "database is locked".
LOCK_WAIT_S = 30.0
LOOKUP_CHUNK = 500  # keys per SELECT ... IN (...), well below SQLite's bound-parameter limit


class Retryable(Exception):
    """One failed attempt worth repeating (transport error, 429, 5xx, a reply that cannot be read)."""


def safe_url(url: str) -> str:
    """The URL without user info, query or fragment, so it can be named in messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def one_line(text: str) -> str:
    return " ".join(text.split())


# ---- where the endpoint is ----


@dataclass(frozen=True)
class Endpoint:
    base_url: str = field(repr=False)  # may carry credentials; messages use `shown`
    model: str
    api_key: str | None = field(default=None, repr=False)
    names: tuple[str, str, str] = ("", "", "")  # the variables URL, model and key came from

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str],
        families: Sequence[tuple[str, str, str]],
        needed_by: str,
        error: type[Exception],
    ) -> Endpoint:
        """The first family (URL, model, key variable names) whose URL is set; the three are
        taken together, so a key is never sent to another family's endpoint. `needed_by`
        starts every message ("filter.scorer is 'llm'"); `error` is the class raised."""
        chosen = next((names for names in families if environ.get(names[0], "").strip()), None)
        if chosen is None:
            urls = [names[0] for names in families]
            unset = f"{urls[0]} is not set" if len(urls) == 1 else f"neither {' nor '.join(urls)} is set"
            raise error(f"{needed_by} but {unset} (e.g. http://127.0.0.1:8000/v1 for a local vLLM server)")
        url_name, model_name, key_name = chosen
        base_url = environ[url_name].strip().rstrip("/")
        _check_url(base_url, url_name, error)
        model = environ.get(model_name, "").strip()
        if not model:
            raise error(
                f"{needed_by} and {url_name} is set but {model_name} is not "
                "(the model name the endpoint serves, e.g. Qwen/Qwen3-8B)"
            )
        return cls(base_url, model, environ.get(key_name, "").strip() or None, chosen)

    @property
    def shown(self) -> str:
        return safe_url(self.base_url)

    def hint(self, status: int) -> str:
        url_name, model_name, key_name = self.names
        if status in (401, 403):
            return f" (check {key_name})"
        if status == 404:
            return f" (check {url_name}, usually ending in /v1, and {model_name})"
        return ""


def _check_url(url: str, name: str, error: type[Exception]) -> None:
    import httpx

    try:
        scheme = urlsplit(url).scheme
        httpx.URL(url)
        safe_url(url)  # urlsplit checks the port only when asked for it
    except (httpx.InvalidURL, ValueError):
        # The parsers' own messages may quote the URL, and with it a password.
        raise error(f"{name} is not a valid URL") from None
    if scheme not in ("http", "https"):
        raise error(f"{name} must start with http:// or https://")


def reply_content(response: httpx.Response) -> str | None:
    try:
        content = response.json()["choices"][0]["message"]["content"]
    except (ValueError, LookupError, TypeError):
        return None
    return content if isinstance(content, str) else None


# ---- asking ----


@dataclass(eq=False)
class ChatClient:
    """Asks one endpoint: retries with backoff, counts requests, and drops vLLM's
    `chat_template_kwargs` once if the endpoint refuses it. `route` and `content_of` let the
    same client ask another OpenAI route (the engine's token-id /completions)."""

    endpoint: Endpoint
    concurrency: int = 8
    timeout_s: float = 60.0
    max_tokens: int = 128
    attempts: int = 4
    backoff_s: float = 1.0  # sleeps backoff_s * 2**n between attempts; tests make it tiny
    hints: Mapping[int, str] = field(default_factory=dict)  # HTTP status -> what to check, beyond the endpoint's
    route: str = "/chat/completions"
    content_of: Callable[[httpx.Response], str | None] = field(default=lambda response: reply_content(response))
    requests_sent: int = field(default=0, init=False)  # HTTP requests sent (retries included)
    _template_kwargs: bool = field(default=True, init=False, repr=False)
    _count_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def body(self, prompt: str, **extra) -> dict:
        body = {
            "model": self.endpoint.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": self.max_tokens,
            **extra,
        }
        if self._template_kwargs:  # Qwen3 on vLLM/SGLang: no thinking before the answer
            body["chat_template_kwargs"] = {"enable_thinking": False}
        return body

    def ask(
        self,
        client: httpx.Client,
        make_body: Callable[[], dict],
        read: Callable[[str], R],
        what: str,
        failed: Callable[[str], Exception],
    ) -> R:
        """`read(content)` turns the reply into a result or raises Retryable; `failed(detail)`
        builds the exception for a request that cannot succeed (`what` names the answer)."""
        last = ""
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                return read(self._post(client, make_body(), failed))
            except Retryable as failure:
                last = str(failure)
        raise failed(f"no usable {what} from {self.endpoint.shown} after {self.attempts} attempts; last: {last}")

    def _post(self, client: httpx.Client, body: dict, failed: Callable[[str], Exception]) -> str:
        import httpx

        try:
            response = client.post(self.endpoint.base_url + self.route, json=body)
        except httpx.TransportError as exc:  # connection refused, reset, timeout
            raise Retryable(f"{type(exc).__name__}: {self.scrub(str(exc))}") from None
        with self._count_lock:
            self.requests_sent += 1
        status = response.status_code
        if status == 400 and self._template_kwargs and "chat_template_kwargs" in response.text:
            self._template_kwargs = False  # an endpoint that does not take vLLM's extra field
            raise Retryable(f"HTTP 400 for chat_template_kwargs: {self.quote(response.text)}; sent without it next")
        if status == 429 or status >= 500:
            raise Retryable(f"HTTP {status}: {self.quote(response.text)}")
        if status >= 400:
            hint = self.hints.get(status) or self.endpoint.hint(status)
            raise failed(f"{self.endpoint.shown} answered HTTP {status}{hint}: {self.quote(response.text)}")
        content = self.content_of(response)
        if content is None:
            raise Retryable(f"no message content in the reply: {self.quote(response.text)}")
        return content

    def ask_all(
        self,
        items: Sequence[T],
        ask_one: Callable[[httpx.Client, T], R],
        keep: Callable[[T, R], None],
        progress: str | None = None,
    ) -> None:
        """Asks for every item, `concurrency` at a time; `keep(item, result)` runs in this
        thread as each answer arrives. The first failure stops the sending, what already came
        back is kept, and the failure is raised."""
        import httpx
        from tqdm.auto import tqdm

        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        headers = {"Authorization": f"Bearer {self.endpoint.api_key}"} if self.endpoint.api_key else {}
        bar = tqdm(total=len(items), desc=progress, unit="request", disable=progress is None)
        with (
            httpx.Client(timeout=self.timeout_s, limits=limits, headers=headers) as client,
            ThreadPoolExecutor(max_workers=self.concurrency) as pool,
        ):
            futures: dict[Future, T] = {pool.submit(ask_one, client, item): item for item in items}
            first_error: BaseException | None = None
            try:
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
                    keep(futures[future], future.result())
                    bar.update(1)
            finally:
                # A failed write or Ctrl-C must not wait for every queued request to be sent.
                for pending in futures:
                    pending.cancel()
                bar.close()
            if first_error is not None:
                raise first_error

    def scrub(self, text: str) -> str:
        # Belt and braces: an endpoint or proxy could echo the key or a credentialed URL back.
        for secret in (self.endpoint.api_key, self.endpoint.base_url):
            if secret:
                text = text.replace(secret, "***")
        return text

    def quote(self, text: str) -> str:
        text = self.scrub(text)
        return repr(text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "…")


# ---- the answer cache ----


@contextlib.contextmanager
def open_cache(path: Path, schema: str, what: str, redo: str) -> Iterator[sqlite3.Connection]:
    """The cache (`what`, e.g. "score cache"), created with `schema` if missing. Any SQLite
    failure while it is open, here or in the caller's block, becomes one InputError naming
    the file; `redo` says what deleting a broken file costs."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: autocommit, so each answer is its own transaction.
        db = sqlite3.connect(path, timeout=LOCK_WAIT_S, isolation_level=None)
    except (OSError, sqlite3.Error) as exc:
        raise _cache_error(path, exc, what, redo) from None
    try:
        _use_wal(db)
        db.execute(schema)
        yield db
    except sqlite3.Error as exc:
        raise _cache_error(path, exc, what, redo) from None
    finally:
        db.close()


def select_keys(db: sqlite3.Connection, query: str, keys: Sequence[str]) -> list[tuple]:
    """Rows of `query` ("SELECT ... WHERE key IN") for the given keys, in chunks."""
    unique = list(dict.fromkeys(keys))
    rows: list[tuple] = []
    for start in range(0, len(unique), LOOKUP_CHUNK):
        chunk = unique[start : start + LOOKUP_CHUNK]
        rows += db.execute(f"{query} ({', '.join('?' * len(chunk))})", chunk).fetchall()
    return rows


def _use_wal(db: sqlite3.Connection) -> None:
    # WAL: readers never block the writer, and the mode sticks to the file. Switching a new
    # file to it needs the file to itself, and there SQLite answers "locked" at once instead of
    # waiting out the timeout, so two processes creating the cache together wait here by hand.
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _cache_error(path: Path, exc: Exception, what: str, redo: str) -> InputError:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary code; OSError has none
    if code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_ERROR):
        # SQLITE_ERROR here means a database with some other table layout.
        reason = f"not a usable {what} ({exc}); delete the file to {redo}"
    elif code == sqlite3.SQLITE_BUSY:
        reason = f"{what} still locked by another process after {LOCK_WAIT_S:.0f} s"
    else:  # read-only file or folder, a folder in the file's place, a full disk
        reason = f"cannot write the {what} ({exc}); the file and its folder must be writable"
    return InputError(str(path), reason)
