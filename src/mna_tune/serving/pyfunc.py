"""The MLflow pyfunc model behind `models:/<name>@champion`: questions or chat messages in,
Korean answers out, formatted exactly as in training.

The pyfunc artifact holds the adapter and a small JSON naming the base model, never the
base weights: a hub base is fetched (or found in the HF cache) when loaded, a local base
folder must exist at the recorded path, and tiny-qwen3 is rebuilt from its seed.
"""

from __future__ import annotations

import json
from pathlib import Path

from mlflow.pyfunc import PythonModel

from ..chat import SYSTEM_PROMPT, build_messages, strip_think
from ..decoding import GenerationSettings


def to_conversations(model_input) -> list[list[dict]]:
    """Questions or OpenAI-style messages -> conversations with the training system prompt.

    Accepts a DataFrame with a `question` or a `messages` column, a list of questions,
    a list of message lists, or one message list."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        if "messages" in model_input.columns:
            items = list(model_input["messages"])
        elif "question" in model_input.columns:
            items = list(model_input["question"])
        else:
            raise ValueError(f"expected a 'question' or 'messages' column, got {list(model_input.columns)}")
    elif isinstance(model_input, dict) and "messages" in model_input:
        items = [model_input["messages"]]
    elif isinstance(model_input, list) and model_input and isinstance(model_input[0], dict):
        items = [model_input]
    elif isinstance(model_input, (list, tuple)):
        items = list(model_input)
    elif isinstance(model_input, str):
        items = [model_input]
    else:
        raise ValueError(f"cannot read questions from {type(model_input).__name__}")
    conversations = []
    for item in items:
        if isinstance(item, str):
            conversations.append(build_messages(item))
            continue
        messages = [{"role": m["role"], "content": m["content"]} for m in item]
        if not messages or messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": SYSTEM_PROMPT})
        if messages[-1]["role"] == "assistant":
            raise ValueError("the last message must not be the assistant's: there is nothing to answer")
        conversations.append(messages)
    return conversations


class AdapterChatModel(PythonModel):
    """pyfunc flavour: predict(questions or messages) -> Korean answers, chat-formatted
    exactly as in training (Qwen3 no-think)."""

    def load_context(self, context):
        from ..modeling import load_adapter_model, load_tokenizer
        from ..params import ModelParams

        config = json.loads(Path(context.artifacts["serving_config"]).read_text(encoding="utf-8"))
        model = ModelParams(**config["model"])
        self.settings = GenerationSettings(**config["generation"])
        self.tokenizer = load_tokenizer(model.base)
        self.model = load_adapter_model(model, Path(context.artifacts["adapter"]))

    def answer(self, conversations: list[list[dict]], max_new_tokens: int | None = None) -> tuple[list[str], int]:
        from dataclasses import replace

        from ..evaluation.generation import generate

        settings = replace(self.settings, max_new_tokens=max_new_tokens) if max_new_tokens else self.settings
        raw, new_tokens, _ = generate(self.model, self.tokenizer, conversations, settings)
        return [strip_think(text) for text in raw], new_tokens

    def predict(self, context, model_input, params=None):
        return self.answer(to_conversations(model_input))[0]
