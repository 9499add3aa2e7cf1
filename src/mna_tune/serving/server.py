"""An OpenAI-compatible `/v1/chat/completions` server around a registered version."""

from __future__ import annotations

import time
import uuid

from pydantic import BaseModel

from ..chat import render_prompt
from ..params import Params
from .pyfunc import AdapterChatModel, to_conversations


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


def main(params: Params, args) -> None:
    import uvicorn

    from ..registry.registry import Registry

    registry = Registry(params.mlflow)
    version = registry.version(args.model)
    model = registry.load_pyfunc(version).unwrap_python_model()
    name = f"{registry.name}/{version.version}"
    print(f"serve: {name} ({args.model}) on http://{args.host}:{args.port}/v1/chat/completions")
    uvicorn.run(create_app(model, name), host=args.host, port=args.port, log_level="warning")
