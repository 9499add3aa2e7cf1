"""Answers from a running engine: prompts go as token ids to vLLM's /v1/completions (so no
message text is ever re-rendered or read as a control token), answers come back as token
ids and are decoded by the project's own tokenizer, exactly as the transformers path
decodes them. Requests go through the project's one endpoint client (retries, concurrency,
scrubbing), as many at once as the engine batches."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from ..decoding import GenerationSettings
from ..llm_endpoint import ChatClient, Endpoint, Retryable
from .process import Engine, EngineError


def completion_body(
    model: str, prompt: list[int], settings: GenerationSettings, stop_ids: list[int], seed: int | None
) -> dict:
    body: dict[str, Any] = {
        "model": model,
        "prompt": prompt,
        "max_tokens": settings.max_new_tokens,
        "repetition_penalty": settings.repetition_penalty,
        "stop_token_ids": stop_ids,
        "return_token_ids": True,
        "skip_special_tokens": True,
    }
    if settings.do_sample:
        body.update(temperature=settings.temperature, top_k=settings.top_k or -1, top_p=settings.top_p)
        if seed is not None:
            body["seed"] = seed
    else:
        body["temperature"] = 0.0  # greedy
    return body


def read_token_ids(text: str) -> list[int]:
    """The generated token ids of a /v1/completions reply, or Retryable."""
    try:
        ids = json.loads(text)["choices"][0]["token_ids"]
    except (ValueError, LookupError, TypeError):
        raise Retryable(f"a /v1/completions reply without choices[0].token_ids: {text[:200]!r}") from None
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        raise Retryable(f"token_ids is not a list of integers: {text[:200]!r}")
    return ids


class EngineAnswers:
    """Generation on one running engine, for the base model or any LoRA module it serves."""

    def __init__(self, engine: Engine, tokenizer, timeout_s: float = 600.0):
        self.engine, self.tokenizer = engine, tokenizer
        self.client = ChatClient(
            Endpoint(engine.base_url, engine.spec.served_name, engine.spec.api_key, ("engine", "model", "key")),
            concurrency=engine.spec.max_num_seqs,
            timeout_s=timeout_s,
            attempts=2,
            route="/completions",
            content_of=lambda response: response.text,
        )
        self.stop_ids = [tokenizer.eos_token_id]
        self.skipped = {tokenizer.eos_token_id, tokenizer.pad_token_id}

    def generate(
        self,
        model: str,
        prompts: Sequence[list[int]],
        settings: GenerationSettings,
        seed: int | None = None,
        progress: str | None = None,
    ) -> tuple[list[str], int, float]:
        """Raw answers (special tokens removed, think tags kept), new-token count, seconds."""
        results: dict[int, list[int]] = {}
        started = time.perf_counter()

        def ask_one(client, index: int) -> list[int]:
            body = completion_body(model, prompts[index], settings, self.stop_ids, seed)
            return self.client.ask(client, lambda: body, read_token_ids, "answer", self._failed)

        try:
            self.client.ask_all(list(range(len(prompts))), ask_one, results.__setitem__, progress=progress)
        except EngineError:
            raise
        except Exception as exc:  # transport failures of a dead engine surface here too
            if self.engine.exited():
                raise self.engine.died() from None
            raise EngineError(f"the vLLM engine failed to answer: {exc}") from None
        seconds = time.perf_counter() - started
        ids = [results[i] for i in range(len(prompts))]
        new_tokens = sum(1 for row in ids for token in row if token not in self.skipped)
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True), new_tokens, seconds

    def _failed(self, detail: str) -> EngineError:
        if self.engine.exited():
            return self.engine.died()
        return EngineError(f"the vLLM engine: {detail}")

    def load_adapter(self, name: str, folder: str, replace: bool = False) -> None:
        """Serve another adapter (or a new version under the same name) without a restart."""
        body = {"lora_name": name, "lora_path": folder, "load_inplace": replace}
        self._lora_call("/load_lora_adapter", body, f"adapter {name} ({folder})")

    def unload_adapter(self, name: str) -> None:
        self._lora_call("/unload_lora_adapter", {"lora_name": name}, f"unloading adapter {name}")

    def _lora_call(self, route: str, body: dict, what: str) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {self.engine.spec.api_key}"} if self.engine.spec.api_key else {}
        try:
            response = httpx.post(self.engine.base_url + route, json=body, headers=headers, timeout=120.0)
        except httpx.HTTPError as exc:
            raise self.engine.died() if self.engine.exited() else EngineError(f"{what}: {exc}") from None
        if response.status_code != 200:
            raise EngineError(f"the vLLM engine refused {what}: {response.text[:300]}")
