"""How answers are decoded, stated once for every room that generates: evaluation decodes
with `settings_of(params)`, and each registered version carries the same settings in its
`serving_config.json`, so `ask`, `serve` and the pyfunc model answer like the evaluated
adapter."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .params import Params

SERVING_CONFIG = "serving_config.json"


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int
    batch_size: int
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def generate_kwargs(self) -> dict:
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        else:  # silence the model's own sampling defaults (Qwen3 ships temperature 0.6)
            kwargs.update(temperature=None, top_k=None, top_p=None)
        return kwargs


def settings_of(params: Params) -> GenerationSettings:
    e = params.evaluate
    return GenerationSettings(
        e.max_new_tokens, e.batch_size, e.do_sample, e.temperature, e.top_k, e.top_p, e.repetition_penalty
    )


def serving_config(params: Params) -> dict:
    """What a registered version needs besides its adapter: the base model and how the
    evaluation decoded (answers then match the evaluated ones)."""
    return {
        "base": params.model.base,
        "model": params.model.model_dump(mode="json"),
        "generation": asdict(settings_of(params)),
    }
