"""What every server the project ships refuses before a model sees the request, as plain
ASGI middleware: the hand-written server wraps its app in it, and the vLLM engine's server
loads it with `--middleware` (so this module imports nothing but the standard library; its
settings come from the environment the engine is started with).

- a body over the cap: 413 at once when Content-Length says so, or as soon as the bytes
  read pass it (a chunked body), before it is ever held whole;
- a body that does not arrive within the timeout (a Content-Length and then nothing): 408;
- `Authorization: bearer <key>` is read as `Bearer <key>` (schemes are case-insensitive);
- a stable model name (`mna-tune-qwen3-adapter@champion`) is sent on as the version it
  stands for now (`mna-tune-qwen3-adapter/8`), read from the file MNA_TUNE_MODEL_NAMES names:
  `serve --engine vllm` loads a promoted version beside the old one and then rewrites that
  file, so each request is answered wholly by one version, never half by each;
- on the chat and completion routes, a JSON body whose message text cannot be UTF-8 (a lone
  surrogate such as "\\ud800"), or, where the server would read them as control tokens (the
  engine renders messages through a chat template), Qwen3's special-token strings: 400
  naming the field. `max_tokens` that is not an integer (a string, true): 400, as OpenAI.
  An empty question (the last user message blank): 400.
"""

from __future__ import annotations

import asyncio
import json
import os
import re

MAX_BODY_VARIABLE = "MNA_TUNE_MAX_BODY_BYTES"
MODEL_NAMES_VARIABLE = "MNA_TUNE_MODEL_NAMES"  # a JSON file {stable name: served name}, rewritten atomically
BODY_TIMEOUT_VARIABLE = "MNA_TUNE_BODY_TIMEOUT_S"
CONTROL_TOKENS_VARIABLE = "MNA_TUNE_REFUSE_CONTROL_TOKENS"
DEFAULT_BODY_TIMEOUT_S = 30.0
# Qwen3's added tokens are all of these shapes: <|im_start|>, <|endoftext|>, <think>, <tool_call>, ...
CONTROL_TOKEN = re.compile(r"<\|[A-Za-z0-9_]+\|>|</?(?:think|tool_call|tool_response)>")
CHECKED_ROUTES = ("/v1/chat/completions", "/v1/completions")


def body_cap_for(max_model_len: int) -> int:
    """A body cap that fits any prompt the context could hold: 32 bytes per token (Korean as
    JSON \\u escapes is 6 bytes a character, a token about one to two characters), 64 KiB at least."""
    return max(64 * 1024, 32 * max_model_len)


class Refused(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


class RequestGuard:
    def __init__(
        self,
        app,
        max_body_bytes: int | None = None,
        body_timeout_s: float | None = None,
        refuse_control_tokens: bool | None = None,
    ):
        self.app = app
        self.max_body_bytes = max_body_bytes or int(os.environ.get(MAX_BODY_VARIABLE, 1024 * 1024))
        self.body_timeout_s = body_timeout_s or float(os.environ.get(BODY_TIMEOUT_VARIABLE, DEFAULT_BODY_TIMEOUT_S))
        if refuse_control_tokens is None:
            refuse_control_tokens = os.environ.get(CONTROL_TOKENS_VARIABLE, "") == "1"
        self.refuse_control_tokens = refuse_control_tokens
        self.names = ModelNames(os.environ.get(MODEL_NAMES_VARIABLE) or None)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            scope = bearer_spelled_out(scope)
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        try:
            body = await self._read(scope, receive)
            if scope["path"] in CHECKED_ROUTES:
                self._check(body)
                body = self.names.rewrite(body)
        except Refused as refused:
            await _respond(send, refused)
            return
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
        scope = {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, scope, receive) -> bytes:
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise Refused(
                413,
                f"the request body ({int(declared)} bytes) is over this server's limit of {self.max_body_bytes} bytes",
                code="request_too_large",
            )
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout_s)
            except TimeoutError:
                raise Refused(
                    408, f"the request body did not arrive within {self.body_timeout_s:g} s", code="request_timeout"
                ) from None
            if message["type"] == "http.disconnect":
                raise Refused(400, "the client went away")
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                raise Refused(
                    413,
                    f"the request body is over this server's limit of {self.max_body_bytes} bytes",
                    code="request_too_large",
                )
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _check(self, body: bytes) -> None:
        try:
            request = json.loads(body)
        except ValueError:
            return  # the server answers malformed JSON itself
        if not isinstance(request, dict):
            return
        for key in ("max_tokens", "max_completion_tokens"):
            value = request.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise Refused(400, f"{key} must be an integer, got {json.dumps(value)}", param=key, code="invalid_type")
        question = _last_user_text(request)
        if question is not None and not question[1].strip():
            raise Refused(400, "the question is empty", param=question[0], code="empty_question")
        for where, text in _texts(request):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise Refused(400, f"{where} is not valid Unicode text (a lone surrogate)", param=where) from None
            if self.refuse_control_tokens and CONTROL_TOKEN.search(text):
                found = CONTROL_TOKEN.search(text).group(0)  # type: ignore[union-attr]
                raise Refused(
                    400,
                    f"{where} holds the control-token text {found!r}, which this server does not accept in a message",
                    param=where,
                )


class ModelNames:
    """The stable names and the served names they stand for, re-read when the file changes."""

    def __init__(self, path: str | None):
        self.path = path
        self.stamp: int | None = None
        self.names: dict[str, str] = {}

    def current(self) -> dict:
        if self.path is None:
            return {}
        try:
            stamp = os.stat(self.path).st_mtime_ns
            if stamp != self.stamp:
                with open(self.path, encoding="utf-8") as handle:
                    self.names, self.stamp = json.load(handle), stamp
        except (OSError, ValueError):
            pass  # mid-replace or gone: keep the names last read
        return self.names

    def rewrite(self, body: bytes) -> bytes:
        names = self.current()
        if not names:
            return body
        try:
            request = json.loads(body)
        except ValueError:
            return body
        if isinstance(request, dict) and request.get("model") in names:
            request["model"] = names[request["model"]]
            return json.dumps(request).encode()
        return body


def bearer_spelled_out(scope: dict) -> dict:
    """Authentication schemes are case-insensitive (RFC 7235): `bearer <key>` is `Bearer <key>`."""
    headers = scope["headers"]
    for index, (name, value) in enumerate(headers):
        if name == b"authorization" and value[:7].lower() == b"bearer " and not value.startswith(b"Bearer "):
            headers = [*headers[:index], (name, b"Bearer " + value[7:].lstrip()), *headers[index + 1 :]]
            return {**scope, "headers": headers}
    return scope


def _last_user_text(request: dict) -> tuple[str, str] | None:
    """(field, text) of the last user message's text, when it is plain text."""
    messages = request.get("messages")
    if not isinstance(messages, list):
        return None
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return (f"messages[{index}].content", content) if isinstance(content, str) else None
    return None


def _texts(request: dict):
    messages = request.get("messages")
    if isinstance(messages, list):
        for index, message in enumerate(messages):
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                yield f"messages[{index}].content", content
            elif isinstance(content, list):
                for part_index, part in enumerate(content):
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        yield f"messages[{index}].content[{part_index}].text", part["text"]
    prompt = request.get("prompt")
    if isinstance(prompt, str):
        yield "prompt", prompt
    elif isinstance(prompt, list):
        for index, item in enumerate(prompt):
            if isinstance(item, str):
                yield f"prompt[{index}]", item


def _replay(body: bytes, receive):
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _respond(send, refused: Refused) -> None:
    kind = "invalid_request_error" if refused.status < 500 else "server_error"
    payload = json.dumps(
        {"error": {"message": refused.message, "type": kind, "param": refused.param, "code": refused.code}}
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": refused.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
