"""Who generates evaluate's answers (`evaluate.engine`): transformers' `generate` on the
loaded model, or the vLLM engine serving the same base model with each adapter as a LoRA
module. Both take the same conversations, encode them with `chat.prompt_ids`, decode with
the project's tokenizer and return the same things, so the rest of the stage does not know
which one ran. Greedy answers are the same token for token (tests/test_engine.py).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

from ..chat import prompt_ids
from ..decoding import GenerationSettings
from ..params import Params
from .generation import generate, sample_answers

BASE = "base"  # the name the engine serves the base model under
ADAPTER = "adapter"  # ... and the workspace adapter


class TransformersAnswers:
    """`which` is "base" (the adapter switched off) or the model's own adapter."""

    engine = "transformers"

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.identity = {"engine": self.engine}
        self.description = self.engine

    def _as(self, which: str):
        return self.model.disable_adapter() if which == BASE else nullcontext()

    def generate(
        self, which: str, conversations: list[list[dict]], settings: GenerationSettings, progress: str | None = None
    ) -> tuple[list[str], int, float]:
        with self._as(which):
            return generate(self.model, self.tokenizer, conversations, settings, progress)

    def sample(
        self,
        which: str,
        conversations: list[list[dict]],
        settings: GenerationSettings,
        samples: int,
        seed: int,
        progress: str | None = None,
    ) -> list[list[str]]:
        with self._as(which):
            return sample_answers(self.model, self.tokenizer, conversations, settings, samples, seed, progress)

    def with_adapter(self, name: str, folder: Path, model) -> TransformersAnswers:
        """Answers from another adapter (a registered version), loaded as `model`."""
        return TransformersAnswers(model, self.tokenizer)


class VllmAnswers:
    """Answers from the running engine: `which` is "base", "adapter" or a loaded version."""

    engine = "vllm"

    def __init__(self, engine_answers, tokenizer, params: Params):
        self.answers, self.tokenizer = engine_answers, tokenizer
        vllm = params.evaluate.vllm
        self.identity = {
            "engine": self.engine,
            "version": engine_answers.engine.version,
            "dtype": engine_answers.engine.spec.dtype,
            "max_num_seqs": vllm.max_num_seqs,
            "max_model_len": vllm.max_model_len,
        }
        self.description = f"{engine_answers.engine.version} ({engine_answers.engine.spec.dtype})"

    adapter = ADAPTER  # the served name the "adapter" is asked for under

    def _model(self, which: str) -> str:
        return self.adapter if which == ADAPTER else which

    def _prompts(self, conversations: list[list[dict]]) -> list[list[int]]:
        return [prompt_ids(self.tokenizer, messages) for messages in conversations]

    def generate(
        self, which: str, conversations: list[list[dict]], settings: GenerationSettings, progress: str | None = None
    ) -> tuple[list[str], int, float]:
        return self.answers.generate(self._model(which), self._prompts(conversations), settings, progress=progress)

    def sample(
        self,
        which: str,
        conversations: list[list[dict]],
        settings: GenerationSettings,
        samples: int,
        seed: int,
        progress: str | None = None,
    ) -> list[list[str]]:
        """Pass s is seeded with seed + 1 + s, as on the transformers path (the draws differ:
        the engine's sampler is not torch's)."""
        prompts, sampled = self._prompts(conversations), replace(settings, do_sample=True)
        passes = [
            self.answers.generate(
                self._model(which),
                prompts,
                sampled,
                seed=seed + 1 + number,
                progress=None if progress is None else f"{progress} {number + 1}/{samples}",
            )[0]
            for number in range(samples)
        ]
        return [list(answers) for answers in zip(*passes)]

    def with_adapter(self, name: str, folder: Path, model) -> VllmAnswers:
        """The same engine, with `folder` loaded as `name` and asked for as the "adapter"."""
        self.answers.load_adapter(name, str(folder))
        other = copy.copy(self)
        other.adapter = name
        return other


@contextlib.contextmanager
def answering(params: Params, model, tokenizer) -> Iterator[TransformersAnswers | VllmAnswers]:
    """The answer source `evaluate.engine` names; with vllm, the engine runs (base model plus
    the workspace adapter) until the block ends, however it ends."""
    if params.evaluate.engine == "transformers":
        yield TransformersAnswers(model, tokenizer)
        return
    from ..engine.client import EngineAnswers
    from ..engine.models import engine_dtype, engine_model
    from ..engine.process import EngineSpec, lora_rank_for, running_engine
    from ..workspace import project_root

    root, vllm = project_root(), params.evaluate.vllm
    cache = root / params.paths.cache
    spec = EngineSpec(
        model=engine_model(params.model, cache),
        served_name=BASE,
        dtype=engine_dtype(params.model),
        max_model_len=vllm.max_model_len,
        max_num_seqs=vllm.max_num_seqs,
        seed=params.train.seed,
        loras={ADAPTER: str(Path(params.paths.train.adapter).resolve())},
        max_lora_rank=lora_rank_for(params.lora.r),
        kv_cache_gib=vllm.kv_cache_gib,
        runtime_lora=True,  # a champion evaluated on this split is loaded beside the candidate
        startup_timeout_s=vllm.startup_timeout_s,
    )
    with running_engine(spec, root, cache / "engine") as engine:
        yield VllmAnswers(EngineAnswers(engine, tokenizer), tokenizer, params)
