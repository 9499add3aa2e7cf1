"""What the engine loads for `model.base`: a hub id or a model folder as it is; the embedded
tiny-qwen3 written once as a model folder (its seeded weights and the project's own Qwen3
tokenizer files), so vLLM serves exactly the weights training started from."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from ..modeling import dtype_name, load_base_model, load_tokenizer, resolve_base, tiny_qwen3_config
from ..params import ModelParams


def engine_model(model: ModelParams, cache_dir: Path) -> str:
    source = resolve_base(model.base)
    if source.kind != "tiny":
        return source.name
    config = json.dumps(tiny_qwen3_config().to_dict(), sort_keys=True, default=str)
    digest = hashlib.sha256(f"{model.tiny_seed}:{config}".encode()).hexdigest()[:16]
    folder = cache_dir / "engine_models" / f"{source.name}-{digest}"
    if not (folder / "config.json").is_file():
        _write_tiny(model, folder)
    return str(folder)


def engine_dtype(model: ModelParams) -> str:
    return dtype_name(model.dtype)


def _write_tiny(model: ModelParams, folder: Path) -> None:
    """Written beside its place and renamed into it: a killed write leaves no half folder."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        load_base_model(model).save_pretrained(scratch)
        load_tokenizer(model.base).save_pretrained(scratch)
        try:
            os.rename(scratch, folder)
        except OSError:  # another process wrote it meanwhile: theirs is the same
            if not (folder / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
