"""The app both servers run: OpenAI's /v1/chat/completions (also streaming), /v1/models and
/health, and nothing else (no /docs, no /openapi.json). What generates is given to it
(serving/jobs.py); which names it answers to is a `Served`, which only the registry moves.

Every request is checked into a `Plan` before any model work (serving/protocol.py), a fixed
number of generations run at once (the next gets 429), a gone client stops its generation,
and with an API key every route needs it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from ..decoding import GenerationSettings
from .guard import RequestGuard, bearer_spelled_out
from .jobs import Job, Outcome, Slots
from .protocol import ApiError, ChatRequest, Plan, Reply, error_body, error_response, plan, validation_error

log = logging.getLogger("mna_tune.serve")


@dataclass(frozen=True)
class Limits:
    """What one request may cost. The CLI's defaults (`mna-tune serve --help`) are these."""

    max_tokens_cap: int = 2048
    request_timeout_s: float = 120.0
    max_concurrency: int = 1
    api_key: str | None = None
    max_body_bytes: int = 1024 * 1024  # larger bodies get 413 before they are read (serving/guard.py)
    body_timeout_s: float = 30.0  # a body that has not arrived by then gets 408


class Served:
    """The names a server answers to: stable names (`<model>@champion`) first, each standing
    for a version name (`<model>/7`), then the versions loaded, each with the decoding it was
    evaluated with. An omitted `model` means the first name. Moved only by the server's own
    registry watcher (copy on write: a request sees one state, never half of a move)."""

    def __init__(self, aliases: dict[str, str], versions: dict[str, GenerationSettings]):
        self.aliases, self.versions = dict(aliases), dict(versions)

    def names(self) -> list[str]:
        return [*self.aliases, *self.versions]

    def resolve(self, requested: str | None) -> tuple[str, GenerationSettings]:
        """(version name, its decoding) for the `model` a request names."""
        aliases, versions = self.aliases, self.versions  # one state for the whole lookup
        name = requested if requested is not None else next(iter([*aliases, *versions]))
        version = aliases.get(name, name)
        if version not in versions:
            raise ApiError(
                404,
                f"the model {name!r} does not exist; this server serves {', '.join(map(repr, self.names()))}",
                param="model",
                code="model_not_found",
            )
        return version, versions[version]

    def add(self, version: str, settings: GenerationSettings) -> None:
        self.versions = {**self.versions, version: settings}

    def point(self, alias: str, version: str) -> None:
        self.aliases = {**self.aliases, alias: version}

    def drop(self, version: str) -> None:
        self.versions = {name: s for name, s in self.versions.items() if name != version}


# ---------------------------------------------------------------- replies


def finish_reason(outcome: Outcome, reply: Reply, plan_: Plan, eos_id: int) -> str:
    ended = reply.stopped or (outcome.tokens and outcome.tokens[-1] == eos_id)
    return "stop" if ended or len(outcome.tokens) < plan_.max_new_tokens else "length"


def usage(plan_: Plan, outcome: Outcome, eos_id: int) -> dict:
    completion = sum(1 for token in outcome.tokens if token != eos_id)
    return {
        "prompt_tokens": len(plan_.input_ids),
        "completion_tokens": completion,
        "total_tokens": len(plan_.input_ids) + completion,
    }


def outcome_error(outcome: Outcome, limits: Limits) -> ApiError | None:
    if outcome.error is not None:
        log.error("generation failed: %s", outcome.error, exc_info=outcome.error)
        return ApiError(500, "generation failed on the server", type_="server_error", code="generation_failed")
    if outcome.timed_out:
        return ApiError(
            504,
            f"generation took longer than the request time limit ({limits.request_timeout_s:g} s, "
            "--request-timeout); ask for fewer tokens",
            type_="timeout_error",
            code="request_timeout",
        )
    if outcome.interrupted:
        return ApiError(503, "the server is shutting down", type_="server_error", code="server_shutting_down")
    return None


def sse(data) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


# ---------------------------------------------------------------- the app


class BearerAuth:
    """Every request must carry `Authorization: Bearer <key>` (compared in constant time).
    Plain ASGI rather than an HTTP middleware: it must not wrap streaming responses."""

    def __init__(self, app, key: str):
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            given = dict(bearer_spelled_out(scope)["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                error = ApiError(
                    401,
                    "a valid API key is required: Authorization: Bearer <key>",
                    type_="authentication_error",
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(models, served: Served, limits: Limits = Limits()):
    """The FastAPI app over `models` (jobs.LocalModel or jobs.EngineModels).
    `app.state.stopping` stops every running generation (set on SIGTERM by `serve`);
    `app.state.slots.free` counts the generations that could start now."""
    app = FastAPI(title="mna-tune", version="1", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.stopping = threading.Event()
    app.state.slots = slots = Slots(limits.max_concurrency)
    tokenizer = models.tokenizer
    eos_id = tokenizer.eos_token_id

    # Starlette types every handler as (Request, Exception); each is registered for one class.
    async def api_error(request, exc: Exception):
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def invalid_request(request, exc: Exception):
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_error(exc))

    async def http_error(request, exc: Exception):  # unknown path, wrong method
        assert isinstance(exc, HTTPException)
        return error_response(ApiError(exc.status_code, str(exc.detail), headers=exc.headers))

    async def server_error(request, exc: Exception):  # the traceback goes to the log, not to the client
        return error_response(ApiError(500, "internal server error", type_="server_error"))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, server_error)
    # Outermost last: the key is checked before any body is read, then the guard reads it.
    app.add_middleware(RequestGuard, max_body_bytes=limits.max_body_bytes, body_timeout_s=limits.body_timeout_s)
    if limits.api_key:
        app.add_middleware(BearerAuth, key=limits.api_key)

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    def models_list():
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": 0, "owned_by": "mna-tune"} for name in served.names()],
        }

    def planned(body: ChatRequest) -> Plan:
        version, settings = served.resolve(body.model)
        return plan(body, version, settings, tokenizer, models.context, limits.max_tokens_cap)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        # in a thread: tokenizing a long prompt must not hold up the other requests
        plan_ = await asyncio.to_thread(planned, body)
        if app.state.stopping.is_set():
            raise ApiError(503, "the server is shutting down", type_="server_error", code="server_shutting_down")
        if not slots.take():
            raise ApiError(
                429,
                f"the server is busy ({limits.max_concurrency} request(s) in flight, --max-concurrency); retry later",
                type_="rate_limit_error",
                code="server_busy",
                headers={"Retry-After": "1"},
            )
        try:
            job = models.job(plan_, app.state.stopping, slots, limits.request_timeout_s)
            job.start()
        except BaseException:
            slots.give_back()
            raise
        # `model` names the version that answered, as OpenAI names the snapshot behind an alias
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": plan_.version}
        if plan_.stream:
            return StreamingResponse(
                stream(job, plan_, meta), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        return await complete(job, plan_, meta, request)

    async def complete(job: Job, plan_: Plan, meta: dict, request: Request):
        try:
            while (event := await job.next(0.25)) is None:
                if await request.is_disconnected():
                    return JSONResponse({}, status_code=499)  # nobody reads it; `finally` stops the generation
        finally:
            job.cancel()
        outcome = event[1]
        if error := outcome_error(outcome, limits):
            return error_response(error)
        reply = Reply(plan_.stops)
        reply.feed(tokenizer.decode(outcome.tokens, skip_special_tokens=True))
        reply.finish()
        message = {"role": "assistant", "content": reply.sent["content"]}
        if plan_.enable_thinking:
            message["reasoning_content"] = reply.sent["reasoning"]
        return {
            **meta,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": finish_reason(outcome, reply, plan_, eos_id),
                }
            ],
            "usage": usage(plan_, outcome, eos_id),
        }

    def chunk(meta: dict, delta: dict, finish: str | None = None) -> str:
        return sse(
            {
                **meta,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
        )

    def deltas_of(reply_deltas: dict, thinking: bool) -> dict:
        delta = {"content": reply_deltas["content"]} if "content" in reply_deltas else {}
        if thinking and "reasoning" in reply_deltas:
            delta["reasoning_content"] = reply_deltas["reasoning"]
        return delta

    async def stream(job: Job, plan_: Plan, meta: dict):
        """SSE chunks; a client that goes away cancels this generator, and `finally` stops the
        generation. A comment line every second of silence notices a gone client early."""
        reply = Reply(plan_.stops)
        try:
            yield chunk(meta, {"role": "assistant", "content": ""})
            while True:
                event = await job.next(1.0)
                if event is None:
                    yield ": waiting\n\n"
                elif event[0] == "text":
                    if delta := deltas_of(reply.feed(event[1]), plan_.enable_thinking):
                        yield chunk(meta, delta)
                else:
                    break
            outcome = event[1]
            if error := outcome_error(outcome, limits):
                yield sse(error_body(error.message, error.type, error.param, error.code))
                yield sse("[DONE]")
                return
            if delta := deltas_of(reply.finish(), plan_.enable_thinking):
                yield chunk(meta, delta)
            yield chunk(meta, {}, finish_reason(outcome, reply, plan_, eos_id))
            if plan_.include_usage:
                yield sse(
                    {**meta, "object": "chat.completion.chunk", "choices": [], "usage": usage(plan_, outcome, eos_id)}
                )
            yield sse("[DONE]")
        finally:
            job.cancel()

    return app
