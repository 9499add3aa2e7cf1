"""`mna-tune serve --engine vllm`: vLLM's own OpenAI-compatible server for a registered
version, the base model loaded once and the version's adapter served as a LoRA module under
its version's name (`<registered model>/7`), and users send a stable name
(`<registered model>@champion`; the request guard in front sends it on as the version it
stands for). When the alias moves (`mna-tune promote`, `rollback`, a passed gate), the new
version is loaded beside the old one (vLLM's runtime LoRA loading) and then the stable name
points at it: no restart, no failed request, and every request is answered wholly by one
version. The version before the previous one is unloaded at the next swap.

The server's limits map onto vLLM's flags: --max-model-len (context), --max-concurrency
(--max-num-seqs), --api-key (VLLM_API_KEY, never on the command line), --host/--port. In
front of it sits the project's request guard (body cap, body timeout, control-token text,
lone surrogates; serving/guard.py), loaded with vLLM's --middleware.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from ..chat import SERVING_CHAT_TEMPLATE
from ..decoding import SERVING_CONFIG
from ..params import ModelParams, Params
from ..workspace import project_root
from . import guard


def served_name(registered_model: str, ref: str) -> str:
    """What users put in `model`: `<model>@champion` for an alias, `<model>/7` for a version."""
    return f"{registered_model}{ref}" if ref.startswith("@") else version_name(registered_model, ref)


def version_name(registered_model: str, version: str) -> str:
    return f"{registered_model}/{version}"


def point(names_file: Path, stable: str, served: str) -> None:
    """The stable name now stands for `served` (written beside and renamed: never half a file)."""
    scratch = names_file.with_suffix(".tmp")
    scratch.write_text(json.dumps({stable: served}), encoding="utf-8")
    os.replace(scratch, names_file)


def fetch_version(registry, version, into: Path) -> tuple[Path, ModelParams | None]:
    """The version's adapter folder (downloaded under `into`) and the model params it was
    trained with (None for a version registered without a serving config)."""
    adapter = registry.download_adapter(version, into)
    config = next(into.rglob(SERVING_CONFIG), None)
    model = ModelParams(**json.loads(config.read_text(encoding="utf-8"))["model"]) if config else None
    return adapter, model


def lora_rank(adapter: Path) -> int:
    return int(json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))["r"])


def main(params: Params, args) -> None:
    from ..engine.client import EngineAnswers
    from ..engine.models import engine_dtype, engine_model
    from ..engine.process import EngineError, EngineSpec, lora_rank_for, running_engine
    from ..modeling import load_tokenizer
    from ..registry.registry import Registry
    from .server import limits_of, warn_if_exposed

    limits = limits_of(args)
    registry = Registry(params.mlflow)
    version = registry.version(args.model)
    name = served_name(registry.name, args.model)
    root = project_root()
    cache = root / params.paths.cache
    scratch = Path(tempfile.mkdtemp(prefix="serve-", dir=cache if cache.is_dir() else None))
    try:
        adapter, model = fetch_version(registry, version, scratch / f"v{version.version}")
        model = model or params.model
        template = scratch / "chat_template.jinja"
        template.write_text(SERVING_CHAT_TEMPLATE, encoding="utf-8")
        names_file = scratch / "model_names.json"
        first = version_name(registry.name, str(version.version))
        point(names_file, name, first)
        spec = EngineSpec(
            model=engine_model(model, cache),
            served_name=f"{registry.name}-base",
            dtype=engine_dtype(model),
            max_model_len=args.max_model_len,
            max_num_seqs=limits.max_concurrency,
            seed=0,
            loras={first: str(adapter)},
            max_lora_rank=lora_rank_for(max(lora_rank(adapter), params.lora.r)),
            kv_cache_gib=params.evaluate.vllm.kv_cache_gib,
            host=args.host,
            port=args.port,
            api_key=limits.api_key,
            runtime_lora=True,
            startup_timeout_s=params.evaluate.vllm.startup_timeout_s,
            chat_template=str(template),
            middleware={**guard_settings(args), guard.MODEL_NAMES_VARIABLE: str(names_file)},
        )
        warn_if_exposed(args.host, limits)
        with running_engine(spec, root, cache / "engine") as engine:
            key_note = " (API key required)" if limits.api_key else ""
            print(f"serve: {name} (v{version.version}) on {engine.base_url}/chat/completions{key_note}", flush=True)
            answers = EngineAnswers(engine, load_tokenizer(model.base))
            follow_alias(registry, args.model, str(version.version), name, answers, scratch, args.poll_s, names_file)
            raise EngineError(f"the vLLM engine behind `serve` stopped: {engine.died()}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def guard_settings(args) -> dict[str, str]:
    cap = args.max_body_bytes or guard.body_cap_for(args.max_model_len)
    return {guard.MAX_BODY_VARIABLE: str(cap), guard.CONTROL_TOKENS_VARIABLE: "1"}


def follow_alias(
    registry, ref: str, shown: str, name: str, answers, scratch: Path, poll_s: float, names_file: Path
) -> None:
    """Until the engine stops: every `poll_s`, the alias's version; a new one is loaded beside
    the old, then the stable name points at it; the one before the old is unloaded."""
    engine = answers.engine
    loaded = [shown]
    while engine.alive():
        time.sleep(poll_s)
        if not ref.startswith("@") or not engine.alive():
            continue
        current = registry.alias_version(ref[1:])
        if current is None or str(current.version) == shown:
            continue
        started = time.monotonic()
        version = str(current.version)
        if version not in loaded:
            adapter, _ = fetch_version(registry, current, scratch / f"v{version}")
            answers.load_adapter(version_name(registry.name, version), str(adapter))
            loaded.append(version)
        point(names_file, name, version_name(registry.name, version))
        print(
            f"serve: {name} now answers with v{version} (was v{shown}; swapped in "
            f"{time.monotonic() - started:.1f} s, no restart)",
            file=sys.stderr,
            flush=True,
        )
        shown = version
        while len(loaded) > 2:  # requests to the one before the previous have long ended
            old = loaded.pop(0)
            answers.unload_adapter(version_name(registry.name, old))
            shutil.rmtree(scratch / f"v{old}", ignore_errors=True)
