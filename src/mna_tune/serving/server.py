"""An OpenAI-compatible `/v1/chat/completions` server around a registered version.

Misuse-proof by construction: every request is validated into a `Plan` before any model
work (errors are 400s in OpenAI's error shape), generation runs in a worker thread that a
`threading.Event` stops after the current token (client gone, request time limit, server
shutting down), a fixed number of requests run at once (the next gets 429), and prompts
are encoded with `chat.prompt_ids`, so message text never becomes a control token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList, TextStreamer

from ..chat import prompt_ids
from ..params import Params
from .guard import RequestGuard, bearer_spelled_out
from .pyfunc import AdapterChatModel, to_conversations

log = logging.getLogger("mna_tune.serve")

API_KEY_ENV = "MNA_TUNE_API_KEY"
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_STOPS, MAX_STOP_CHARS = 4, 256  # OpenAI allows 4; the length bounds the per-token stop check


@dataclass(frozen=True)
class Limits:
    """What one request may cost. The CLI's defaults (`mna-tune serve --help`) are these."""

    max_tokens_cap: int = 2048
    request_timeout_s: float = 120.0
    max_concurrency: int = 1
    api_key: str | None = None
    max_body_bytes: int = 1024 * 1024  # larger bodies get 413 before they are read (serving/guard.py)
    body_timeout_s: float = 30.0  # a body that has not arrived by then gets 408

    def check(self) -> None:
        if self.max_tokens_cap < 1 or self.request_timeout_s <= 0 or self.max_concurrency < 1:
            raise ValueError(
                "serve: --max-tokens-cap and --max-concurrency must be at least 1 and --request-timeout positive"
            )


# ---------------------------------------------------------------- errors, in OpenAI's shape


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type_: str = "invalid_request_error",
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_
        self.headers = headers


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(
        error_body(error.message, error.type, error.param, error.code), status_code=error.status, headers=error.headers
    )


def param_path(loc) -> str:
    """('body', 'messages', 0, 'content') -> 'messages[0].content'"""
    path = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def validation_error(exc) -> ApiError:
    """FastAPI's request-validation error as a 400 naming the first offending field."""
    first = exc.errors()[0]
    param = param_path(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        return ApiError(400, "the request body is not valid JSON", code="invalid_json")
    if first.get("type") == "extra_forbidden":
        return ApiError(400, f"{param}: unknown or unsupported field", param=param, code="unsupported_field")
    return ApiError(
        400, f"{param}: {first.get('msg')}" if param else str(first.get("msg")), param=param, code="invalid_value"
    )


# ---------------------------------------------------------------- the request


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Message(Strict):
    role: str
    content: Any = None  # a string or text parts: checked by message_text, with clearer errors


class ChatTemplateKwargs(Strict):
    enable_thinking: bool = False


class StreamOptions(Strict):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The honoured fields; everything else lands in `model_extra` and is refused by `plan`."""

    model_config = ConfigDict(extra="allow")

    messages: list[Message]
    model: str | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: Any = None  # a string or a list of strings: checked by stops_of
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    chat_template_kwargs: ChatTemplateKwargs | None = None


# Chat-completions fields this server cannot honour. Setting one is refused, never ignored;
# null, or the one value that changes nothing (below), is accepted.
UNSUPPORTED = (
    "audio",
    "frequency_penalty",
    "function_call",
    "functions",
    "logit_bias",
    "logprobs",
    "metadata",
    "modalities",
    "n",
    "parallel_tool_calls",
    "prediction",
    "presence_penalty",
    "prompt_cache_key",
    "reasoning_effort",
    "response_format",
    "safety_identifier",
    "service_tier",
    "store",
    "tool_choice",
    "tools",
    "top_logprobs",
    "user",
    "verbosity",
    "web_search_options",
)
NEUTRAL = {"n": 1, "frequency_penalty": 0, "presence_penalty": 0, "logprobs": False, "store": False}


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float
    top_k: int  # 0: off (OpenAI has no top_k; only the served settings can set it)
    seed: int


@dataclass(frozen=True)
class Plan:
    """A validated request: what to generate, how, and how to answer."""

    input_ids: list[int]
    max_new_tokens: int
    sampling: Sampling | None  # None: greedy
    stops: tuple[str, ...]
    enable_thinking: bool
    stream: bool
    include_usage: bool


def is_neutral(name: str, value) -> bool:
    neutral = NEUTRAL.get(name)
    # bool apart from numbers: `"n": true` is not `"n": 1`
    return name in NEUTRAL and value == neutral and isinstance(value, bool) == isinstance(neutral, bool)


def check_fields(request: ChatRequest) -> None:
    for name, value in (request.model_extra or {}).items():
        if value is None or is_neutral(name, value):
            continue
        if name in UNSUPPORTED:
            only = f" (only {json.dumps(NEUTRAL[name])})" if name in NEUTRAL else ""
            raise ApiError(400, f"{name} is not supported by this server{only}", param=name, code="unsupported_field")
        raise ApiError(400, f"unknown field {name}", param=name, code="unknown_field")
    if request.stream_options is not None and not request.stream:
        raise ApiError(400, "stream_options is only allowed with stream: true", param="stream_options")


def message_text(index: int, content) -> str:
    """A message's content: a string, or text parts joined by newlines (as vLLM does)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ApiError(
            400,
            f"messages[{index}].content must be a string or a list of text parts",
            param=f"messages[{index}].content",
        )
    texts = []
    for j, part in enumerate(content):
        param = f"messages[{index}].content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else type(part).__name__
        if kind != "text" or not isinstance(part.get("text"), str) or set(part) != {"type", "text"}:
            raise ApiError(
                400,
                f'{param}: only {{"type": "text", "text": "..."}} parts are supported, got {kind!r}',
                param=param,
                code="unsupported_content",
            )
        texts.append(part["text"])
    return "\n".join(texts)


def conversation_of(messages: list[Message]) -> list[dict]:
    """Checked messages with the training system prompt added when none leads."""
    if not messages:
        raise ApiError(400, "messages must not be empty", param="messages")
    conversation = []
    for i, message in enumerate(messages):
        if message.role not in ROLES:
            raise ApiError(
                400,
                f"messages[{i}].role {message.role!r} is not supported; use system, user or assistant",
                param=f"messages[{i}].role",
                code="invalid_role",
            )
        conversation.append({"role": ROLES[message.role], "content": message_text(i, message.content)})
    if not any(m["role"] == "user" for m in conversation):
        raise ApiError(400, "messages hold no user message: there is nothing to answer", param="messages")
    if conversation[-1]["role"] == "assistant":
        raise ApiError(400, "the last message is the assistant's: there is nothing to answer", param="messages")
    last = max(i for i, m in enumerate(conversation) if m["role"] == "user")
    if not conversation[last]["content"].strip():
        raise ApiError(400, "the question is empty", param=f"messages[{last}].content", code="empty_question")
    return to_conversations([conversation])[0]


def requested_tokens(request: ChatRequest, cap: int) -> int | None:
    given = {
        name: value for name in ("max_completion_tokens", "max_tokens") if (value := getattr(request, name)) is not None
    }
    if len(set(given.values())) > 1:
        raise ApiError(400, "max_tokens and max_completion_tokens differ; send one", param="max_tokens")
    for name, value in given.items():
        if value < 1:
            raise ApiError(400, f"{name} must be at least 1, got {value}", param=name, code="invalid_value")
        if value > cap:
            raise ApiError(
                400,
                f"{name} {value} is more than this server allows ({cap}, --max-tokens-cap)",
                param=name,
                code="invalid_value",
            )
    return next(iter(given.values()), None)


def stops_of(stop) -> tuple[str, ...]:
    """`stop` as OpenAI defines it: a string or a list of up to 4 strings."""
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOPS
        or any(not isinstance(s, str) or not s or len(s) > MAX_STOP_CHARS for s in stops)
    ):
        raise ApiError(
            400,
            f"stop takes a string or up to {MAX_STOPS} non-empty strings of at most {MAX_STOP_CHARS} characters",
            param="stop",
        )
    return tuple(stops)


def sampling_of(request: ChatRequest, settings) -> Sampling | None:
    """OpenAI's sampling fields over the served settings (the evaluation's decoding, greedy by
    default): temperature 0 is greedy; top_p alone samples at temperature 1, as OpenAI does."""
    temperature, top_p, top_k = (
        (settings.temperature, settings.top_p, settings.top_k) if settings.do_sample else (0.0, 1.0, 0)
    )
    if request.top_p is not None:
        top_p = request.top_p
        temperature = temperature or 1.0
    if request.temperature is not None:
        temperature = request.temperature
    if temperature == 0:
        return None
    seed = request.seed if request.seed is not None else secrets.randbits(63)
    return Sampling(temperature, top_p, top_k, seed)


def plan(request: ChatRequest, model: AdapterChatModel, name: str, limits: Limits) -> Plan:
    check_fields(request)
    if request.model not in (None, name):
        raise ApiError(
            404,
            f"the model {request.model!r} does not exist; this server serves {name!r}",
            param="model",
            code="model_not_found",
        )
    conversation = conversation_of(request.messages)
    requested = requested_tokens(request, limits.max_tokens_cap)
    stops = stops_of(request.stop)
    thinking = bool(request.chat_template_kwargs and request.chat_template_kwargs.enable_thinking)
    ids = prompt_ids(model.tokenizer, conversation, enable_thinking=thinking)
    context = model.model.config.max_position_embeddings
    room = context - len(ids)
    if room < (requested or 1):
        raise ApiError(
            400,
            f"the prompt has {len(ids)} tokens and {requested or 1} more are asked for: more than "
            f"the model's context of {context} tokens",
            param="messages",
            code="context_length_exceeded",
        )
    max_new = requested or min(model.settings.max_new_tokens, limits.max_tokens_cap, room)
    return Plan(
        ids,
        max_new,
        sampling_of(request, model.settings),
        stops,
        thinking,
        request.stream,
        bool(request.stream_options and request.stream_options.include_usage),
    )


# ---------------------------------------------------------------- generation


class Interrupt(StoppingCriteria):
    """Stops generation, after the current token, when one of `events` is set (client gone,
    server stopping) or the request's deadline passed."""

    def __init__(self, events: list[threading.Event], deadline: float):
        self.events, self.deadline, self.timed_out = events, deadline, False

    def __call__(self, input_ids, scores, **kwargs):
        self.timed_out = self.timed_out or time.monotonic() > self.deadline
        stop = self.timed_out or any(event.is_set() for event in self.events)
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class StopText(StoppingCriteria):
    """Stops once the generated text contains a stop string. Each step decodes only the last
    tokens that can hold the longest one (a character is at most 4 byte-level tokens)."""

    def __init__(self, tokenizer, stops: tuple[str, ...], prompt_length: int):
        self.tokenizer, self.stops, self.prompt_length = tokenizer, stops, prompt_length
        self.window = 4 * max(len(s) for s in stops) + 2

    def __call__(self, input_ids, scores, **kwargs):
        start = max(self.prompt_length, input_ids.shape[1] - self.window)
        tail = self.tokenizer.decode(input_ids[0, start:], skip_special_tokens=True)
        hit = any(stop in tail for stop in self.stops)
        return torch.full((input_ids.shape[0],), hit, dtype=torch.bool, device=input_ids.device)


class SeededSampler(LogitsProcessor):
    """Temperature / top-k / top-p sampling from the request's own torch.Generator, so a seed
    reproduces an answer whatever else runs (torch's global generator is shared by all
    requests). It picks the token and leaves only it possible; generate runs greedy."""

    def __init__(self, sampling: Sampling):
        self.sampling = sampling
        self.generator: torch.Generator | None = None

    def __call__(self, input_ids, scores):
        s = self.sampling
        if self.generator is None:
            self.generator = torch.Generator(device=scores.device).manual_seed(s.seed)
        logits = scores.float() / s.temperature
        if s.top_k:
            kth = torch.topk(logits, min(s.top_k, logits.shape[-1])).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = logits.softmax(-1)
        if s.top_p < 1:
            ordered, order = probs.sort(descending=True)
            outside = ordered.cumsum(-1) - ordered >= s.top_p  # the mass before them already reaches top_p
            probs = torch.zeros_like(probs).scatter(-1, order, ordered.masked_fill(outside, 0.0))
        token = torch.multinomial(probs, 1, generator=self.generator)
        return torch.full_like(scores, float("-inf")).scatter(-1, token, 0.0)


class QueueStreamer(TextStreamer):
    """Hands decoded text to the event loop (generation runs in a worker thread), token by
    token. transformers' TextStreamer holds everything after a symbol until the next space, so
    `합병은,두회사가…` arrived as one chunk at the end. Here everything decoded is sent except a
    trailing incomplete character (U+FFFD while a byte-level token has not finished it)."""

    def __init__(self, tokenizer, send):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.send = send  # not `put`: that is the streamer's own method, which generate calls

    def put(self, value):
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        self.token_cache.extend(value.reshape(-1).tolist())  # one sequence: the server generates per request
        text = str(self.tokenizer.decode(self.token_cache, **self.decode_kwargs))  # one sequence: one str
        complete = len(text.rstrip("\ufffd"))
        if complete > self.print_len:
            self.on_finalized_text(text[self.print_len : complete])
            self.print_len = complete
        if text.endswith("\n"):  # as TextStreamer: a line is done; keep one token as decoding context
            self.token_cache = self.token_cache[-1:]
            self.print_len = len(self.tokenizer.decode(self.token_cache, **self.decode_kwargs))

    def on_finalized_text(self, text: str, stream_end: bool = False):
        if text:
            self.send(("text", text))


class Slots:
    """At most `size` generations at once; a request that finds none free is refused, not queued."""

    def __init__(self, size: int):
        self.free, self.lock = size, threading.Lock()

    def take(self) -> bool:
        with self.lock:
            if self.free == 0:
                return False
            self.free -= 1
            return True

    def give_back(self) -> None:
        with self.lock:
            self.free += 1


@dataclass
class Outcome:
    tokens: list[int]  # generated ids
    timed_out: bool
    interrupted: bool  # client gone or server stopping
    error: BaseException | None = None


class Job:
    """One request's generation in a daemon thread (a stuck generation never holds the
    process). Text pieces (when streaming) and the outcome arrive on an asyncio queue; the
    slot is given back when the thread ends, not when the response does."""

    def __init__(self, model: AdapterChatModel, plan_: Plan, stopping: threading.Event, slots: Slots, timeout_s: float):
        self.model, self.plan, self.slots = model, plan_, slots
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.interrupt = Interrupt([self.cancelled, stopping], time.monotonic() + timeout_s)

    def start(self) -> None:
        threading.Thread(target=self._run, name="generate", daemon=True).start()

    def cancel(self) -> None:
        self.cancelled.set()

    async def next(self, wait_s: float):
        """The next ("text", str) or ("done", Outcome), or None after `wait_s` of silence."""
        try:
            return await asyncio.wait_for(self.queue.get(), wait_s)
        except TimeoutError:
            return None

    def _put(self, item) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is gone, nobody waits
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def _kwargs(self) -> dict:
        model, plan_ = self.model, self.plan
        settings = replace(model.settings, max_new_tokens=plan_.max_new_tokens, do_sample=False)
        input_ids = torch.tensor([plan_.input_ids], device=model.model.device)
        criteria = [self.interrupt] + (
            [StopText(model.tokenizer, plan_.stops, len(plan_.input_ids))] if plan_.stops else []
        )
        kwargs = dict(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            **settings.generate_kwargs(),
            pad_token_id=model.tokenizer.pad_token_id,
            eos_token_id=model.tokenizer.eos_token_id,
            stopping_criteria=StoppingCriteriaList(criteria),
        )
        if plan_.sampling:
            kwargs["logits_processor"] = LogitsProcessorList([SeededSampler(plan_.sampling)])
        if plan_.stream:
            kwargs["streamer"] = QueueStreamer(model.tokenizer, self._put)
        return kwargs

    def _run(self) -> None:
        outcome = Outcome([], False, False)
        try:
            with torch.no_grad():
                output = self.model.model.generate(**self._kwargs())
            outcome.tokens = output[0, len(self.plan.input_ids) :].tolist()
        except BaseException as exc:  # reported to the client; the thread must still give the slot back
            outcome.error = exc
        finally:
            outcome.timed_out = self.interrupt.timed_out
            outcome.interrupted = any(event.is_set() for event in self.interrupt.events)
            self.slots.give_back()
            self._put(("done", outcome))


# ---------------------------------------------------------------- the reply text

TAGS = ("<think>", "</think>")


def split_think(text: str) -> tuple[str, str]:
    """(reasoning, content): a leading think block is reasoning, stray think tags are dropped."""
    body = text.lstrip()
    reasoning, content = "", text
    if body.startswith(TAGS[0]):
        reasoning, _, content = body[len(TAGS[0]) :].partition(TAGS[1])
    for tag in TAGS:
        content = content.replace(tag, "")
    return reasoning.strip(), content.strip()


def undecided_tail(text: str, patterns) -> int:
    """Length of the longest end of `text` that could still grow into one of `patterns`."""
    return max((n for p in patterns for n in range(1, len(p)) if text.endswith(p[:n])), default=0)


class Reply:
    """Generated text -> what the client sees, fed piece by piece: cut before the first stop
    string, a leading think block split off as reasoning, outer whitespace stripped. Text that
    may still become a stop string or a think tag is held back, so the streamed deltas add
    up to exactly the non-streamed answer."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops, self.raw, self.stopped = stops, "", False
        self.sent = {"reasoning": "", "content": ""}

    def feed(self, piece: str) -> dict[str, str]:
        if not self.stopped:
            self.raw += piece
            cuts = [i for i in (self.raw.find(stop) for stop in self.stops) if i >= 0]
            if cuts:
                self.raw, self.stopped = self.raw[: min(cuts)], True
        return self._deltas(final=False)

    def finish(self) -> dict[str, str]:
        return self._deltas(final=True)

    def _visible(self, final: bool) -> tuple[str, str]:
        text = self.raw
        if not (final or self.stopped):
            text = text[: len(text) - undecided_tail(text, self.stops + TAGS)]
        return split_think(text)

    def _deltas(self, final: bool) -> dict[str, str]:
        deltas = {}
        for field, visible in zip(("reasoning", "content"), self._visible(final)):
            if visible.startswith(self.sent[field]) and len(visible) > len(self.sent[field]):
                deltas[field] = visible[len(self.sent[field]) :]
                self.sent[field] = visible
        return deltas


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
        log.error("generation failed", exc_info=outcome.error)
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


def sse(data) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def create_app(model: AdapterChatModel, model_name: str, limits: Limits = Limits()):
    """A FastAPI app with OpenAI's /v1/models and /v1/chat/completions (also streaming).
    `app.state.stopping` stops every running generation (set on SIGTERM by `serve`);
    `app.state.slots.free` counts the generations that could start now."""
    app = FastAPI(title="mna-tune", version="1")
    app.state.stopping = threading.Event()
    app.state.slots = slots = Slots(limits.max_concurrency)
    eos_id = model.tokenizer.eos_token_id

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
    app.add_middleware(
        RequestGuard,
        max_body_bytes=limits.max_body_bytes,
        body_timeout_s=limits.body_timeout_s,
        refuse_control_tokens=False,  # this server escapes control-token text instead (chat.prompt_ids)
    )
    if limits.api_key:
        app.add_middleware(BearerAuth, key=limits.api_key)

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "mna-tune"}]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        # in a thread: tokenizing a long prompt must not hold up the other requests
        plan_ = await asyncio.to_thread(plan, body, model, model_name, limits)
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
            job = Job(model, plan_, app.state.stopping, slots, limits.request_timeout_s)
            job.start()
        except BaseException:
            slots.give_back()
            raise
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_name}
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
        reply.feed(model.tokenizer.decode(outcome.tokens, skip_special_tokens=True))
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


# ---------------------------------------------------------------- running it


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: assume it can be reached from outside


def warn_if_exposed(host: str, limits: Limits) -> None:
    if not is_loopback(host) and not limits.api_key:
        print(
            f"serve: warning: listening on {host} without an API key: anyone who can reach it can use the "
            f"model; set --api-key or {API_KEY_ENV}",
            file=sys.stderr,
            flush=True,
        )


def serve(model: AdapterChatModel, name: str, limits: Limits, host: str, port: int) -> None:
    """Run the app under uvicorn until SIGTERM/SIGINT. Running generations are told to stop
    first, so the graceful shutdown never waits for one (each stops after its current token)."""
    import uvicorn

    app = create_app(model, name, limits)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            app.state.stopping.set()
            super().handle_exit(sig, frame)

    warn_if_exposed(host, limits)
    key_note = " (API key required)" if limits.api_key else ""
    print(f"serve: {name} on http://{host}:{port}/v1/chat/completions{key_note}", flush=True)
    Server(uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3)).run()


def limits_of(args) -> Limits:
    limits = Limits(
        max_tokens_cap=args.max_tokens_cap,
        request_timeout_s=args.request_timeout,
        max_concurrency=args.max_concurrency,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        max_body_bytes=getattr(args, "max_body_bytes", None) or Limits.max_body_bytes,
    )
    limits.check()
    return limits


def main(params: Params, args) -> None:
    from ..engine.process import check_port_free
    from ..registry.registry import Registry

    check_port_free(args.host, args.port)  # first: a busy port is one line before minutes of loading

    if getattr(args, "engine", "transformers") == "vllm":
        from .engine_server import main as serve_on_engine

        serve_on_engine(params, args)
        return

    limits = limits_of(args)
    registry = Registry(params.mlflow)
    version = registry.version(args.model)
    model = registry.load_pyfunc(version).unwrap_python_model()
    serve(model, f"{registry.name}/{version.version}", limits, args.host, args.port)
