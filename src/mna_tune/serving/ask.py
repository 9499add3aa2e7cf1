"""`mna-tune ask`: one question, answered with the training chat format and the
evaluation's decoding settings."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from ..chat import build_messages, strip_think
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
    raw, _, _ = generate(model, tokenizer, [build_messages(question)], settings)
    return strip_think(raw[0])


def main(params: Params, args) -> None:
    if not args.question.strip():
        raise ValueError('the question is empty: mna-tune ask "<a question>"')
    print(ask(params, args.question, args.model))
