"""Serving an adapter: the MLflow pyfunc model behind `models:/<name>@champion`, and an
OpenAI-compatible `/v1/chat/completions` server around it.

The pyfunc artifact holds the adapter and a small JSON naming the base model, never the
base weights: a hub base is fetched (or found in the HF cache) when loaded, a local base
folder must exist at the recorded path, and tiny-qwen3 is rebuilt from its seed.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import mlflow.pyfunc
from pydantic import BaseModel

from .chat import SYSTEM_PROMPT, build_messages, render_prompt, strip_think

SERVING_CONFIG = "serving_config.json"


def serving_config(params) -> dict:
    e = params.evaluate
    return {"base": params.model.base, "tiny_seed": params.model.tiny_seed, "dtype": params.model.dtype,
            "quantization": params.model.quantization, "attn_implementation": params.model.attn_implementation,
            "generation": {"max_new_tokens": e.max_new_tokens, "batch_size": e.batch_size, "do_sample": e.do_sample,
                           "temperature": e.temperature, "top_k": e.top_k, "top_p": e.top_p,
                           "repetition_penalty": e.repetition_penalty}}


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


class AdapterChatModel(mlflow.pyfunc.PythonModel):
    """pyfunc flavour: predict(questions or messages) -> Korean answers, chat-formatted
    exactly as in training (Qwen3 no-think)."""

    def load_context(self, context):
        from .generation import GenerationSettings
        from .modeling import load_adapter_model, load_tokenizer

        config = json.loads(Path(context.artifacts["serving_config"]).read_text(encoding="utf-8"))
        self.settings = GenerationSettings(**config["generation"])
        self.tokenizer = load_tokenizer(config["base"])
        self.model = load_adapter_model(config["base"], Path(context.artifacts["adapter"]), config["tiny_seed"],
                                        config["dtype"], config.get("quantization", "none"),
                                        config.get("attn_implementation", "sdpa"))

    def answer(self, conversations: list[list[dict]], max_new_tokens: int | None = None) -> tuple[list[str], int]:
        from dataclasses import replace

        from .generation import generate

        settings = replace(self.settings, max_new_tokens=max_new_tokens) if max_new_tokens else self.settings
        raw, new_tokens, _ = generate(self.model, self.tokenizer, [render_prompt(c) for c in conversations], settings)
        return [strip_think(text) for text in raw], new_tokens

    def predict(self, context, model_input, params=None):
        return self.answer(to_conversations(model_input))[0]


class ChatMessage(BaseModel):
    role: str
    content: str


class ChatRequest(BaseModel):
    model: str | None = None
    messages: list[ChatMessage]
    max_tokens: int | None = None
    stream: bool = False


def create_app(model: AdapterChatModel, model_name: str):
    """A FastAPI app with OpenAI's /v1/models and /v1/chat/completions (non-streaming)."""
    from fastapi import FastAPI, HTTPException

    app = FastAPI(title="mna-tune", version="1")

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "mna-tune"}]}

    @app.post("/v1/chat/completions")
    def chat(request: ChatRequest):
        if request.stream:
            raise HTTPException(status_code=400, detail="streaming is not supported; set stream to false")
        try:
            conversations = to_conversations([[m.model_dump() for m in request.messages]])
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        prompt_tokens = len(model.tokenizer(render_prompt(conversations[0])).input_ids)
        answers, new_tokens = model.answer(conversations, request.max_tokens)
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answers[0]},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": new_tokens,
                          "total_tokens": prompt_tokens + new_tokens}}

    return app
