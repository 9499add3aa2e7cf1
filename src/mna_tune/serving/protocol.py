"""The protocol both servers enforce (`serve` and `serve --engine vllm`): the chat request
they accept, how a request becomes a `Plan` before any model work, OpenAI's error shape for
every refusal, and how generated text becomes the reply. One owner per rule: both servers
run the same app (serving/app.py) and differ only in what generates (serving/jobs.py), so
a request is refused, or answered, the same way by either.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from ..chat import is_blank, prompt_ids
from ..decoding import GenerationSettings
from .pyfunc import to_conversations

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_STOPS, MAX_STOP_CHARS = 4, 256  # OpenAI allows 4; the length bounds the per-token stop check

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
    enable_thinking: StrictBool = False


class StreamOptions(Strict):
    include_usage: StrictBool = False


class ChatRequest(BaseModel):
    """The honoured fields; everything else lands in `model_extra` and is refused by `plan`.
    Numbers and flags are taken as JSON sends them: "0.5" is not a temperature, true is not 1."""

    model_config = ConfigDict(extra="allow")

    messages: list[Message]
    model: str | None = None
    max_tokens: StrictInt | None = None
    max_completion_tokens: StrictInt | None = None
    temperature: Annotated[float, Field(strict=True, ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(strict=True, gt=0, le=1)] | None = None
    stop: Any = None  # a string or a list of strings: checked by stops_of
    seed: Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    chat_template_kwargs: ChatTemplateKwargs | None = None


# Chat-completions fields these servers cannot honour. Setting one is refused, never ignored;
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
    """A validated request: which version answers, what to generate, how, and how to answer."""

    version: str  # the version name that answers (`<registered model>/7`)
    input_ids: list[int]
    max_new_tokens: int
    sampling: Sampling | None  # None: greedy
    repetition_penalty: float
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


def checked_text(param: str, text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, f"{param} is not valid Unicode text (a lone surrogate)", param=param) from None
    return text


def message_text(index: int, content) -> str:
    """A message's content: a string, or text parts joined by newlines (as vLLM does)."""
    if isinstance(content, str):
        return checked_text(f"messages[{index}].content", content)
    if not isinstance(content, list) or not content:
        raise ApiError(
            400,
            f"messages[{index}].content must be a string or a non-empty list of text parts",
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
        texts.append(checked_text(f"{param}.text", part["text"]))
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
    if is_blank(conversation[last]["content"]):
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


def sampling_of(request: ChatRequest, settings: GenerationSettings) -> Sampling | None:
    """OpenAI's sampling fields over the version's evaluated decoding (greedy by default):
    temperature 0 is greedy; top_p alone samples at temperature 1, as OpenAI does."""
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
    return Sampling(float(temperature), float(top_p), top_k, seed)


def plan(request: ChatRequest, version: str, settings: GenerationSettings, tokenizer, context: int, cap: int) -> Plan:
    """The request checked and turned into what to generate with `version` (already chosen
    from `request.model`); `context` is the prompt + answer tokens a sequence may hold."""
    check_fields(request)
    conversation = conversation_of(request.messages)
    requested = requested_tokens(request, cap)
    stops = stops_of(request.stop)
    thinking = bool(request.chat_template_kwargs and request.chat_template_kwargs.enable_thinking)
    ids = prompt_ids(tokenizer, conversation, enable_thinking=thinking)
    room = context - len(ids)
    if room < (requested or 1):
        raise ApiError(
            400,
            f"the prompt has {len(ids)} tokens and {requested or 1} more are asked for: more than "
            f"the model's context of {context} tokens",
            param="messages",
            code="context_length_exceeded",
        )
    return Plan(
        version,
        ids,
        requested or min(settings.max_new_tokens, cap, room),
        sampling_of(request, settings),
        settings.repetition_penalty,
        stops,
        thinking,
        request.stream,
        bool(request.stream_options and request.stream_options.include_usage),
    )


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
