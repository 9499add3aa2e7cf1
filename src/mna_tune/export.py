"""Adapters out of the pipeline: a merged model folder plain transformers loads, and a
one-question `ask` with the training chat format."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from .chat import CHAT_TEMPLATE, build_messages, render_prompt, strip_think
from .params import Params


def adapter_folder(params: Params, ref: str | None, scratch: Path) -> Path:
    """The workspace adapter (models/adapter) or a registered version's (`7`, `@champion`)."""
    if ref is None:
        return Path("models/adapter")
    from .tracking import Tracker

    tracker = Tracker(params.mlflow)
    return tracker.download_adapter(tracker.resolve_version(ref), scratch)


def export_merged(params: Params, out: Path, ref: str | None = None) -> Path:
    """PEFT merge_and_unload, then safetensors weights, tokenizer and chat template in `out`."""
    from .modeling import load_adapter_model, load_tokenizer

    with tempfile.TemporaryDirectory() as scratch:
        adapter = adapter_folder(params, ref, Path(scratch))
        model = load_adapter_model(params.model.base, adapter, params.model.tiny_seed, params.model.dtype,
                                   attn_implementation=params.model.attn_implementation)
        merged = model.merge_and_unload()
        staging = Path(str(out) + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        merged.save_pretrained(str(staging), safe_serialization=True)
        tokenizer = load_tokenizer(params.model.base)
        tokenizer.chat_template = tokenizer.chat_template or CHAT_TEMPLATE
        tokenizer.save_pretrained(str(staging))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out


def ask(params: Params, question: str, ref: str | None = None) -> str:
    from dataclasses import replace

    from .evaluate import settings_of
    from .generation import generate
    from .modeling import load_adapter_model, load_tokenizer

    with tempfile.TemporaryDirectory() as scratch:
        adapter = adapter_folder(params, ref, Path(scratch))
        m = params.model
        model = load_adapter_model(m.base, adapter, m.tiny_seed, m.dtype, m.quantization, m.attn_implementation)
    tokenizer = load_tokenizer(params.model.base)
    settings = replace(settings_of(params), batch_size=1)  # decoding exactly as in evaluation
    raw, _, _ = generate(model, tokenizer, [render_prompt(build_messages(question))], settings)
    return strip_think(raw[0])
