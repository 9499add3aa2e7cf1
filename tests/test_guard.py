"""The request guard every server sits behind (serving/guard.py), called as ASGI directly:
what it refuses before the app reads a body (size, time, nesting), and that it never holds
an oversized body. What the app refuses in a body is tests/test_server.py's table."""

from __future__ import annotations

import asyncio
import json

import pytest

from mna_tune.serving.guard import RequestGuard, body_cap_for


async def echo_app(scope, receive, send):
    """Stands for the model server: answers with the body it was given."""
    message = await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": message["body"]})


def call(
    guard: RequestGuard,
    chunks: list[bytes],
    declared: int | None = None,
    path="/v1/chat/completions",
    stall_s: float = 0.0,
) -> tuple[int, dict | bytes, int]:
    """(status, body, bytes the guard read) for a POST sent in `chunks`."""
    read = 0
    pending = list(chunks)

    async def receive():
        nonlocal read
        if stall_s:
            await asyncio.sleep(stall_s)
        chunk = pending.pop(0)
        read += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    headers = [(b"content-type", b"application/json")]
    if declared is not None:
        headers.append((b"content-length", str(declared).encode()))
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    asyncio.run(guard(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    status = sent[0]["status"]
    return status, (json.loads(body) if status != 200 else body), read


def body(content: str, **extra) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": content}], **extra}).encode()


def test_a_declared_oversized_body_is_refused_before_a_byte_is_read():
    guard = RequestGuard(echo_app, max_body_bytes=1000)
    status, error, read = call(guard, [b"x" * 10], declared=28_000_000)
    assert status == 413 and error["error"]["code"] == "request_too_large" and read == 0


def test_a_chunked_body_is_cut_off_once_it_passes_the_cap():
    guard = RequestGuard(echo_app, max_body_bytes=1000)
    status, _, read = call(guard, [b"x" * 600] * 50)
    assert status == 413 and read <= 1200  # stopped at the second chunk, not after 30 kB


def test_a_body_that_never_arrives_is_408_not_a_held_connection():
    guard = RequestGuard(echo_app, body_timeout_s=0.2)
    status, error, _ = call(guard, [b"{}"], declared=2, stall_s=5)
    assert status == 408 and "did not arrive" in error["error"]["message"]


@pytest.mark.parametrize("depth", [33, 1500])
def test_json_nested_too_deep_is_400_not_a_recursion_error(depth):
    status, error, _ = call(RequestGuard(echo_app), [b"[" * depth + b"]" * depth])
    assert status == 400 and "deeper than" in error["error"]["message"]


def test_brackets_inside_strings_do_not_count_as_nesting():
    payload = body("[[[[{{{{" * 20 + '\\"[[[' * 20 + "합병", max_tokens=8)
    status, echoed, _ = call(RequestGuard(echo_app), [payload])
    assert status == 200 and echoed == payload


def test_a_good_request_reaches_the_server_unchanged():
    payload = body("실사란 무엇인가요?", max_tokens=8)
    status, echoed, _ = call(RequestGuard(echo_app), [payload[:10], payload[10:]])
    assert status == 200 and echoed == payload


def test_the_cap_fits_any_prompt_the_context_holds():
    assert body_cap_for(2048) == 65536 and body_cap_for(40960) == 32 * 40960


def test_the_bearer_scheme_is_case_insensitive():
    seen = []

    async def app(scope, receive, send):
        seen.append(dict(scope["headers"])[b"authorization"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    scope = {"type": "http", "method": "GET", "path": "/v1/models", "headers": [(b"authorization", b"bearer k-1")]}
    asyncio.run(RequestGuard(app)(scope, None, lambda message: asyncio.sleep(0)))
    assert seen == [b"Bearer k-1"]


def test_the_servers_key_check_takes_a_lower_case_scheme():
    from mna_tune.serving.app import BearerAuth

    statuses = []

    async def app(scope, receive, send):
        statuses.append(200)

    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    for given in (b"bearer k-1", b"BEARER k-1", b"Bearer k-2"):
        scope = {"type": "http", "method": "GET", "path": "/v1/models", "headers": [(b"authorization", given)]}
        asyncio.run(BearerAuth(app, "k-1")(scope, None, send))
    assert statuses == [200, 200, 401]
