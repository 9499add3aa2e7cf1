"""`mna-tune ask`: one question, answered with the training chat format and the
evaluation's decoding settings."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from ..chat import build_messages, is_blank, prompt_ids, strip_think
from ..params import Params
from .export import adapter_folder


def ask(params: Params, question: str, ref: str | None = None) -> str:
    from ..decoding import settings_of
    from ..evaluation.generation import generate
    from ..modeling import load_adapter_model, load_tokenizer

    with tempfile.TemporaryDirectory() as scratch:
        adapter = adapter_folder(params, ref, Path(scratch))
        model = load_adapter_model(params.model, adapter)
    tokenizer = load_tokenizer(params.model.base)
    settings = replace(settings_of(params), batch_size=1)  # decoding exactly as in evaluation
    messages = build_messages(question)
    prompt, context = len(prompt_ids(tokenizer, messages)), model.config.max_position_embeddings
    if prompt + settings.max_new_tokens > context:  # as the servers refuse it: never a truncated prompt
        raise ValueError(
            f"the question is {prompt} tokens with the prompt, and {settings.max_new_tokens} more are asked for "
            f"(evaluate.max_new_tokens): more than the model's context of {context} tokens; ask a shorter question"
        )
    raw, _, _ = generate(model, tokenizer, [messages], settings)
    return strip_think(raw[0])


def main(params: Params, args) -> None:
    if is_blank(args.question):
        raise ValueError('the question is empty: mna-tune ask "<a question>"')
    print(ask(params, args.question, args.model))
