"""A merged model folder that plain transformers loads: the adapter folded into the base
weights (PEFT merge_and_unload), the tokenizer and the training chat template."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ..chat import CHAT_TEMPLATE
from ..params import Params


def adapter_folder(params: Params, ref: str | None, scratch: Path) -> Path:
    """The workspace adapter (paths.train.adapter) or a registered version's (`7`, `@champion`)."""
    if ref is None:
        return params.paths.train.adapter
    from ..registry.registry import Registry

    registry = Registry(params.mlflow)
    return registry.download_adapter(registry.version(ref), scratch)


def export_merged(params: Params, out: Path, ref: str | None = None) -> Path:
    """PEFT merge_and_unload, then safetensors weights, tokenizer and chat template in `out`."""
    from ..modeling import load_adapter_model, load_tokenizer

    with tempfile.TemporaryDirectory() as scratch:
        adapter = adapter_folder(params, ref, Path(scratch))
        # merged weights must be plain tensors: the base is loaded unquantized
        model = load_adapter_model(params.model.model_copy(update={"quantization": "none"}), adapter)
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


def main(params: Params, args) -> None:
    out = export_merged(params, args.merged, args.model)
    print(f"export: merged model, tokenizer and chat template in {out}")
