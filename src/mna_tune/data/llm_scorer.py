"""`llm` relevance scorer: an OpenAI-compatible chat endpoint (e.g. vLLM serving Qwen3) rates
each row 0-100 with a one-line reason, using the prompt template kept in the repository.

The endpoint and its key come from the environment only (see llm_endpoint.py). Scores are
cached by content hash (model + prompt text + normalised question and answer) in a SQLite
file, so reruns only send the rows that are new.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError, require_regular_file
from ..llm_endpoint import ChatClient, Endpoint, Retryable, open_cache, select_keys
from ..workspace import project_root
from .text import match_key

if TYPE_CHECKING:
    import httpx

    from ..params import FilterParams

ENV_BASE_URL = "MNA_TUNE_LLM_BASE_URL"
ENV_MODEL = "MNA_TUNE_LLM_MODEL"
ENV_API_KEY = "MNA_TUNE_LLM_API_KEY"

_PLACEHOLDER = re.compile(r"\{(question|answer)\}")
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)
_SCHEMA = """CREATE TABLE IF NOT EXISTS scores (
    key TEXT PRIMARY KEY,
    score INTEGER NOT NULL CHECK (score BETWEEN 0 AND 100),
    reason TEXT NOT NULL,
    model TEXT NOT NULL)"""


class LlmConfigError(ValueError):
    """The `llm` scorer is selected but the environment does not say where the endpoint is."""


class LlmScoringError(ValueError):
    """A row could not be scored: the message names the row and quotes what came back."""


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
    client: ChatClient
    template: str = field(repr=False)
    cache_path: Path

    @classmethod
    def from_params(
        cls, params: FilterParams, environ: Mapping[str, str] = os.environ, *, backoff_s: float = 1.0
    ) -> LlmScorer:
        endpoint = Endpoint.from_env(
            environ, [(ENV_BASE_URL, ENV_MODEL, ENV_API_KEY)], "filter.scorer is 'llm'", LlmConfigError
        )
        cache = Path(params.llm_cache_path)
        return cls(
            client=ChatClient(
                endpoint, concurrency=params.llm_concurrency, timeout_s=params.llm_timeout_s, backoff_s=backoff_s
            ),
            template=load_template(params.llm_prompt_path),
            # under the repository root, so `dvc exp run --temp/--queue` copies share one cache
            cache_path=cache if cache.is_absolute() else project_root() / cache,
        )

    @property
    def model(self) -> str:
        return self.client.endpoint.model

    def score(self, question: str, answer: str, where: str | None = None) -> tuple[int, str]:
        return self.score_batch([(question, answer)], None if where is None else [where])[0]

    def score_batch(self, pairs: list[tuple[str, str]], wheres: list[str] | None = None) -> list[tuple[int, str]]:
        """Scores in input order. Cached rows cost nothing; the rest go out concurrently and
        each result is committed to the cache as it arrives, so an interrupted run keeps them."""
        if wheres is not None and len(wheres) != len(pairs):
            raise ValueError(f"score_batch got {len(pairs)} rows but {len(wheres)} labels")
        keys = [cache_key(self.model, self.template, question, answer) for question, answer in pairs]
        with open_cache(self.cache_path, _SCHEMA, "score cache", "re-score every row") as db:
            cache = {
                key: (score, reason)
                for key, score, reason in select_keys(db, "SELECT key, score, reason FROM scores WHERE key IN", keys)
            }
            todo: dict[str, int] = {}  # key -> first row index; identical rows are asked once
            for index, key in enumerate(keys):
                if key not in cache and key not in todo:
                    todo[key] = index

            def ask_one(client: httpx.Client, key: str) -> tuple[int, str]:
                index = todo[key]
                where = wheres[index] if wheres is not None else f"row {index + 1} of the batch"
                return self.client.ask(
                    client,
                    lambda: self.client.body(render_prompt(self.template, *pairs[index])),
                    self._read,
                    "score",
                    lambda detail: LlmScoringError(f"{where}: {detail}"),
                )

            def keep(key: str, scored: tuple[int, str]) -> None:
                db.execute(
                    "INSERT OR REPLACE INTO scores (key, score, reason, model) VALUES (?, ?, ?, ?)",
                    (key, *scored, self.model),
                )
                cache[key] = scored

            if todo:
                self.client.ask_all(list(todo), ask_one, keep)
        return [cache[key] for key in keys]

    def _read(self, content: str) -> tuple[int, str]:
        scored = parse_reply(content)
        if scored is None:
            raise Retryable(
                "no JSON object with an integer 'score' in 0..100 and a string 'reason' "
                f"in the reply: {self.client.quote(content)}"
            )
        score, reason = scored
        return score, self.client.scrub(reason)  # the reason is stored and ends up in the filter outputs


def load_template(path: Path) -> str:
    require_regular_file(path, "filter.llm_prompt_path")
    try:
        template = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(str(path), "prompt file not found (filter.llm_prompt_path)") from None
    missing = [name for name in ("{question}", "{answer}") if name not in template]
    if missing:
        raise InputError(str(path), f"the prompt lacks the placeholder(s) {', '.join(missing)}")
    return template
