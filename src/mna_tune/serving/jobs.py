"""What generates a planned request, one `Job` per request, in one of two ways:

- `LocalModel` (`serve`): transformers `generate` in a daemon thread of this process;
- `EngineModels` (`serve --engine vllm`): the vLLM engine, a child process on a private
  loopback port with a key of its own, asked with the prompt's token ids on /v1/completions
  and read back as token ids, which this process decodes with the same tokenizer.

Both give the app the same events: ("text", piece) while streaming, then ("done", Outcome).
A job gives its concurrency slot back when its generation has really ended, and stops after
the current token when it is cancelled (client gone), timed out or the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from dataclasses import dataclass, replace

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList, TextStreamer

from ..decoding import GenerationSettings
from .protocol import Plan, Sampling


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
    """The events of one generation on an asyncio queue, whoever produces them."""

    def __init__(self, plan: Plan, stopping: threading.Event, slots: Slots, timeout_s: float):
        self.plan, self.stopping, self.slots = plan, stopping, slots
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.deadline = time.monotonic() + timeout_s

    def start(self) -> None:
        raise NotImplementedError

    def cancel(self) -> None:
        self.cancelled.set()

    async def next(self, wait_s: float):
        """The next ("text", str) or ("done", Outcome), or None after `wait_s` of silence."""
        try:
            return await asyncio.wait_for(self.queue.get(), wait_s)
        except TimeoutError:
            return None

    def put(self, item) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is gone, nobody waits
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def interrupted(self) -> bool:
        return self.cancelled.is_set() or self.stopping.is_set()


# ---------------------------------------------------------------- transformers, in a thread


class Interrupt(StoppingCriteria):
    """Stops generation, after the current token, when the job is cancelled, the server
    stops or the request's deadline passed."""

    def __init__(self, job: Job):
        self.job, self.timed_out = job, False

    def __call__(self, input_ids, scores, **kwargs):
        self.timed_out = self.timed_out or time.monotonic() > self.job.deadline
        stop = self.timed_out or self.job.interrupted()
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


class LocalJob(Job):
    """One request's generation in a daemon thread (a stuck generation never holds the process)."""

    def __init__(self, model, plan: Plan, stopping: threading.Event, slots: Slots, timeout_s: float):
        super().__init__(plan, stopping, slots, timeout_s)
        self.model = model
        self.interrupt = Interrupt(self)

    def start(self) -> None:
        threading.Thread(target=self._run, name="generate", daemon=True).start()

    def _kwargs(self) -> dict:
        model, plan = self.model, self.plan
        settings = replace(
            model.settings,
            max_new_tokens=plan.max_new_tokens,
            do_sample=False,
            repetition_penalty=plan.repetition_penalty,
        )
        input_ids = torch.tensor([plan.input_ids], device=model.model.device)
        criteria = [self.interrupt] + (
            [StopText(model.tokenizer, plan.stops, len(plan.input_ids))] if plan.stops else []
        )
        kwargs = dict(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            **settings.generate_kwargs(),
            pad_token_id=model.tokenizer.pad_token_id,
            eos_token_id=model.tokenizer.eos_token_id,
            stopping_criteria=StoppingCriteriaList(criteria),
        )
        if plan.sampling:
            kwargs["logits_processor"] = LogitsProcessorList([SeededSampler(plan.sampling)])
        if plan.stream:
            kwargs["streamer"] = QueueStreamer(model.tokenizer, self.put)
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
            outcome.interrupted = self.interrupted()
            self.slots.give_back()
            self.put(("done", outcome))


class LocalModel:
    """One registered version loaded in this process (the pyfunc model's adapter model)."""

    def __init__(self, chat_model):
        self.chat_model = chat_model
        self.tokenizer = chat_model.tokenizer
        self.context = chat_model.model.config.max_position_embeddings

    def job(self, plan: Plan, stopping: threading.Event, slots: Slots, timeout_s: float) -> Job:
        return LocalJob(self.chat_model, plan, stopping, slots, timeout_s)


# ---------------------------------------------------------------- the vLLM engine, over HTTP


def engine_body(plan: Plan, eos_id: int) -> dict:
    """The completion request for a plan: the prompt as token ids, answers as token ids."""
    from ..engine.client import completion_body

    sampling = plan.sampling
    settings = GenerationSettings(
        max_new_tokens=plan.max_new_tokens,
        batch_size=1,
        do_sample=sampling is not None,
        temperature=sampling.temperature if sampling else 1.0,
        top_k=sampling.top_k if sampling else 0,
        top_p=sampling.top_p if sampling else 1.0,
        repetition_penalty=plan.repetition_penalty,
    )
    body = completion_body(plan.version, plan.input_ids, settings, [eos_id], sampling.seed if sampling else None)
    return {**body, "stream": True}


class EngineJob(Job):
    """One request streamed from the engine. Its tokens are decoded here, with the served
    tokenizer, exactly as the transformers path decodes; closing the stream (client gone,
    stop string seen, time limit, server stopping) makes vLLM abort the sequence."""

    def __init__(self, engine: EngineModels, plan: Plan, stopping: threading.Event, slots: Slots, timeout_s: float):
        super().__init__(plan, stopping, slots, timeout_s)
        self.engine = engine

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    def cancel(self) -> None:
        """Also while the engine is silent (queued, or prefilling a long prompt): the task ends now."""
        super().cancel()
        self.loop.call_soon_threadsafe(self.task.cancel)

    async def _run(self) -> None:
        outcome = Outcome([], False, False)
        try:
            async with asyncio.timeout_at(self.loop.time() + self.deadline - time.monotonic()):
                await self._stream(outcome)
        except TimeoutError:
            outcome.timed_out = True
        except Exception as exc:  # noqa: BLE001 - reported to the client; the slot must still come back
            outcome.error = self.engine.failure(exc)
        finally:
            outcome.interrupted = self.interrupted()
            self.slots.give_back()
            self.put(("done", outcome))

    async def _stream(self, outcome: Outcome) -> None:
        tokenizer, sent = self.engine.tokenizer, 0
        body = engine_body(self.plan, tokenizer.eos_token_id)
        async with self.engine.http.stream("POST", "/completions", json=body) as response:
            if response.status_code != 200:
                detail = (await response.aread()).decode("utf-8", "replace")[:300]
                raise RuntimeError(f"the engine answered {response.status_code}: {detail}")
            async for line in response.aiter_lines():
                if self.interrupted():
                    return
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                choice = json.loads(line[6:])["choices"][0]
                outcome.tokens.extend(choice.get("token_ids") or [])
                text = tokenizer.decode(outcome.tokens, skip_special_tokens=True)
                complete = len(text.rstrip("\ufffd"))
                if self.plan.stream and complete > sent:
                    self.put(("text", text[sent:complete]))
                    sent = complete
                if self.plan.stops and any(stop in text for stop in self.plan.stops):
                    return


class EngineModels:
    """The running engine: every loaded version is a LoRA module named after the version."""

    def __init__(self, engine, tokenizer, context: int):
        import httpx

        self.engine, self.tokenizer, self.context = engine, tokenizer, context
        headers = {"Authorization": f"Bearer {engine.spec.api_key}"}
        # one connection per generation that may run at once, none kept waiting
        limits = httpx.Limits(max_connections=engine.spec.max_num_seqs + 4, max_keepalive_connections=8)
        self.http = httpx.AsyncClient(base_url=engine.base_url, headers=headers, timeout=None, limits=limits)

    def job(self, plan: Plan, stopping: threading.Event, slots: Slots, timeout_s: float) -> Job:
        return EngineJob(self, plan, stopping, slots, timeout_s)

    def failure(self, exc: Exception) -> Exception:
        """The engine's death, named from its log, or what went wrong with this request."""
        return self.engine.died() if self.engine.exited(within_s=0.5) else exc
