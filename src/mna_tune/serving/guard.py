"""What the app refuses before a request body reaches it, as plain ASGI middleware (the
request's content is the protocol's business: serving/protocol.py):

- a body over the cap: 413 at once when Content-Length says so, or as soon as the bytes
  read pass it (a chunked body), before it is ever held whole;
- a body that does not arrive within the timeout (a Content-Length and then nothing): 408;
- JSON nested deeper than any chat request needs: 400 (Python's parser would otherwise
  raise RecursionError, a 500);
- `Authorization: bearer <key>` is read as `Bearer <key>` (schemes are case-insensitive).
"""

from __future__ import annotations

import asyncio
import json

from .protocol import error_body

DEFAULT_BODY_TIMEOUT_S = 30.0
MAX_DEPTH = 32  # a chat request nests 5 deep (body, messages, message, content, part)


def body_cap_for(max_model_len: int) -> int:
    """A body cap that fits any prompt the context could hold: 32 bytes per token (Korean as
    JSON \\u escapes is 6 bytes a character, a token about one to two characters), 64 KiB at least."""
    return max(64 * 1024, 32 * max_model_len)


class Refused(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


class RequestGuard:
    def __init__(self, app, max_body_bytes: int = 1024 * 1024, body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S):
        self.app, self.max_body_bytes, self.body_timeout_s = app, max_body_bytes, body_timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            scope = bearer_spelled_out(scope)
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        try:
            body = await self._read(scope, receive)
            check_depth(body)
        except Refused as refused:
            await _respond(send, refused)
            return
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


def check_depth(body: bytes) -> None:
    """400 for JSON nested deeper than MAX_DEPTH. Brackets inside strings are skipped; a body
    that is not JSON at all is left to the app, which names it. Only the brackets and quotes
    are scanned (escaped backslashes and quotes removed first), so a 1 MiB body costs little."""
    skeleton = body.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, NOT_STRUCTURE)
    depth, in_string = 0, False
    for byte in skeleton:
        if byte == 0x22:  # "
            in_string = not in_string
        elif in_string:
            continue
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > MAX_DEPTH:
                raise Refused(400, f"the request body nests JSON deeper than {MAX_DEPTH} levels", code="invalid_json")
        else:
            depth -= 1


NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')


def bearer_spelled_out(scope: dict) -> dict:
    """Authentication schemes are case-insensitive (RFC 7235): `bearer <key>` is `Bearer <key>`."""
    headers = scope["headers"]
    for index, (name, value) in enumerate(headers):
        if name == b"authorization" and value[:7].lower() == b"bearer " and not value.startswith(b"Bearer "):
            headers = [*headers[:index], (name, b"Bearer " + value[7:].lstrip()), *headers[index + 1 :]]
            return {**scope, "headers": headers}
    return scope


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
    payload = json.dumps(error_body(refused.message, "invalid_request_error", refused.param, refused.code)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": refused.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
