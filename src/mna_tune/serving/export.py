"""A merged model folder that plain transformers loads: the adapter folded into the base
weights (PEFT merge_and_unload), the tokenizer and the training chat template."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from ..chat import SERVING_CHAT_TEMPLATE
from ..params import Params
from ..workspace import project_root


def adapter_folder(params: Params, ref: str | None, scratch: Path) -> Path:
    """The workspace adapter (paths.train.adapter) or a registered version's (`7`, `@champion`)."""
    return adapter_and_origin(params, ref, scratch)[0]


def adapter_and_origin(params: Params, ref: str | None, scratch: Path) -> tuple[Path, dict]:
    """The adapter folder and what identifies it for good: the version and its MLflow run
    (not the alias, which moves), and the adapter's content hash."""
    from ..registry.lineage import workspace_md5

    if ref is None:
        adapter = Path(params.paths.train.adapter)
        return adapter, {"adapter": str(adapter), "adapter_md5": workspace_md5(adapter)}
    from ..registry.registry import Registry

    registry = Registry(params.mlflow)
    version = registry.version(ref)
    adapter = registry.download_adapter(version, scratch)
    origin = {
        "registered_model": registry.name,
        "version": str(version.version),
        "asked_as": ref,
        "run_id": version.run_id,
        "adapter_md5": workspace_md5(adapter),
    }
    return adapter, origin


MARKER = ".mna-tune-export"  # written into every export folder: --force replaces only such a folder


def check_target(out: Path, force: bool) -> None:
    """An export never destroys what it did not make: an existing non-empty folder is refused
    unless --force, and --force replaces only a previous export, never the repository or a
    folder that holds it."""
    out = out.resolve()
    if out.exists() and not out.is_dir():
        raise ValueError(f"export: {out} is a file; name a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    if not force:
        raise ValueError(
            f"export: {out} exists and is not empty; name a new folder, or add --force to replace a previous export"
        )
    if project_root().resolve().is_relative_to(out) or (out / ".git").exists():
        raise ValueError(f"export: {out} holds a repository; refusing to replace it even with --force")
    if not (out / MARKER).is_file():
        raise ValueError(
            f"export: {out} is not a previous export (no {MARKER} in it); refusing to replace it even with --force"
        )


def export_merged(params: Params, out: Path, ref: str | None = None, force: bool = False) -> Path:
    """PEFT merge_and_unload, then safetensors weights, tokenizer and chat template, written
    into a temporary sibling of `out` and renamed into place at the end."""
    from ..modeling import load_adapter_model, load_tokenizer

    out = Path(out)
    check_target(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        with tempfile.TemporaryDirectory() as scratch:
            adapter, origin = adapter_and_origin(params, ref, Path(scratch))
            # merged weights must be plain tensors: the base is loaded unquantized
            model = load_adapter_model(params.model.model_copy(update={"quantization": "none"}), adapter)
            model.merge_and_unload().save_pretrained(str(staging), safe_serialization=True)
        tokenizer = load_tokenizer(params.model.base)
        # plain transformers and vLLM users then render the training prompt by default: the
        # system prompt when they send none, the empty think block unless they ask for thinking
        tokenizer.chat_template = SERVING_CHAT_TEMPLATE
        tokenizer.save_pretrained(str(staging))
        (staging / MARKER).write_text(json.dumps({"merged export of": origin}, indent=2) + "\n", encoding="utf-8")
        readable = 0o666 & ~_umask()
        for path in staging.rglob("*"):
            path.chmod(readable | 0o111 if path.is_dir() else readable)
        staging.chmod(readable | 0o111)
        if out.exists():
            shutil.rmtree(out)  # an empty folder, or a previous export (check_target)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _umask() -> int:
    import os

    current = os.umask(0)
    os.umask(current)
    return current


def main(params: Params, args) -> None:
    out = export_merged(params, args.merged, args.model, args.force)
    print(f"export: merged model, tokenizer and chat template in {out}")
