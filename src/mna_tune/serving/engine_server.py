"""`mna-tune serve --engine vllm`: the project's app (serving/app.py) in front, the vLLM
engine behind it as a private child process.

Clients reach only the app: the chat, models and health routes, the same protocol and the
same refusals as `serve`. The engine listens on 127.0.0.1 on a free port with a key of its
own (random, never shown), so vLLM's admin, LoRA-loading, completions, tokenizer, docs and
metrics routes are out of a client's reach and the base model is never named to one.

Each registered version is a LoRA module named after it (`<registered model>/7`). When the
alias moves (`mna-tune promote`, `rollback`, a passed gate), the new version is checked
first (its rank against the engine's `--max-lora-rank`, its base model against the engine's,
its adapter files), then loaded beside the old one, then the stable name points at it: no
restart, and every request is answered wholly by one version. A version the engine cannot
load is refused before any load: the old one keeps answering, one line names the version and
the reason, and the version's record says it was not swapped in (`mna-tune audit`).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..decoding import SERVING_CONFIG, GenerationSettings, settings_of
from ..params import ModelParams, Params
from ..workspace import project_root
from .app import Served
from .server import banner, limits_of, serve, served_for, version_name


def fetch_version(registry, version, into: Path) -> tuple[Path, ModelParams | None, GenerationSettings | None]:
    """The version's adapter folder (downloaded under `into`), the model params it was trained
    with and the decoding it was evaluated with (None for a version without a serving config)."""
    adapter = registry.download_adapter(version, into)
    config_file = next(into.rglob(SERVING_CONFIG), None)
    if config_file is None:
        return adapter, None, None
    config = json.loads(config_file.read_text(encoding="utf-8"))
    return adapter, ModelParams(**config["model"]), GenerationSettings(**config["generation"])


def lora_rank(adapter: Path) -> int:
    return int(json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))["r"])


def same_base(one: ModelParams, other: ModelParams) -> bool:
    """Whether two versions sit on the same base weights (a tiny model is its seed)."""
    return one.base == other.base and (one.base != "tiny-qwen3" or one.tiny_seed == other.tiny_seed)


def swap_refusal(adapter: Path, model: ModelParams | None, served: ModelParams, max_rank: int) -> str | None:
    """Why the running engine cannot serve this adapter, or None when it can."""
    from safetensors import safe_open

    try:
        rank = lora_rank(adapter)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"its adapter_config.json cannot be read ({exc})"
    if rank > max_rank:
        return (
            f"its LoRA rank {rank} is above the engine's --max-lora-rank {max_rank}; "
            f"restart serve with --max-lora-rank {rank} or more"
        )
    if model is not None and not same_base(model, served):
        return f"it was trained on {model.base!r}, the engine serves {served.base!r}"
    try:
        with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as weights:
            if not list(weights.keys()):
                return "its adapter_model.safetensors holds no weights"
    except Exception as exc:  # noqa: BLE001 - whatever the reader says, the file is not an adapter
        return f"its adapter_model.safetensors cannot be read ({exc})"
    return None


class AliasWatch:
    """Until the server stops: every `poll_s`, the alias's version; a new one is checked, loaded
    beside the old, then the stable name points at it; the one before the old is unloaded."""

    def __init__(self, registry, ref: str, served: Served, answers, scratch: Path, poll_s: float, base, max_rank: int):
        self.registry, self.ref, self.served, self.answers = registry, ref, served, answers
        self.scratch, self.poll_s, self.base, self.max_rank = scratch, poll_s, base, max_rank
        self.alias = f"{registry.name}{ref}"
        self.loaded = list(served.versions)
        self.refused: set[str] = set()

    def run(self, stopping: threading.Event) -> None:
        engine = self.answers.engine
        while not stopping.wait(self.poll_s):
            if not engine.alive():  # the server cannot answer any more: stop it, main names the death
                print(f"serve: the vLLM engine stopped: {engine.died()}", file=sys.stderr, flush=True)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            if self.ref.startswith("@"):
                try:
                    self.follow()
                except Exception as exc:  # noqa: BLE001 - a registry hiccup must not stop serving
                    print(f"serve: could not follow {self.alias}: {exc}", file=sys.stderr, flush=True)

    def follow(self) -> None:
        current = self.registry.alias_version(self.ref[1:])
        shown = self.served.aliases[self.alias]
        if current is None:
            return
        version = str(current.version)
        name = version_name(self.registry.name, version)
        if name == shown or version in self.refused:
            return
        started = time.monotonic()
        if name not in self.served.versions:
            adapter, model, settings = fetch_version(self.registry, current, self.scratch / f"v{version}")
            reason = swap_refusal(adapter, model, self.base, self.max_rank)
            if reason is not None:
                self.refuse(version, reason, shown)
                return
            self.answers.load_adapter(name, str(adapter))
            self.served.add(name, settings or self.served.versions[shown])
            self.loaded.append(name)
        self.served.point(self.alias, name)
        print(
            f"serve: {self.alias} now answers with {name} (was {shown}; swapped in "
            f"{time.monotonic() - started:.1f} s, no restart)",
            file=sys.stderr,
            flush=True,
        )
        while len(self.loaded) > 2:  # requests to the one before the previous have long ended
            old = self.loaded.pop(0)
            self.served.drop(old)
            self.answers.unload_adapter(old)
            shutil.rmtree(self.scratch / f"v{old.rpartition('/')[2]}", ignore_errors=True)

    def refuse(self, version: str, reason: str, shown: str) -> None:
        self.refused.add(version)
        shutil.rmtree(self.scratch / f"v{version}", ignore_errors=True)
        line = f"serve --engine vllm did not swap in v{version}: {reason}; {shown} keeps answering"
        print(f"serve: {line}", file=sys.stderr, flush=True)
        self.registry.append_record(version, line)


def main(params: Params, args) -> None:
    from ..engine.client import EngineAnswers
    from ..engine.models import engine_dtype, engine_model
    from ..engine.process import LORA_RANKS, EngineError, EngineSpec, lora_rank_for, running_engine
    from ..modeling import load_tokenizer
    from ..registry.registry import Registry
    from .jobs import EngineModels

    limits = limits_of(args)
    if args.max_lora_rank is not None and args.max_lora_rank not in LORA_RANKS:
        raise ValueError(f"serve: --max-lora-rank {args.max_lora_rank} is not one of vLLM's ranks {LORA_RANKS}")
    registry = Registry(params.mlflow)
    version = registry.version(args.model)
    root = project_root()
    cache = root / params.paths.cache
    scratch = Path(tempfile.mkdtemp(prefix="serve-", dir=cache if cache.is_dir() else None))
    try:
        adapter, model, settings = fetch_version(registry, version, scratch / f"v{version.version}")
        model = model or params.model
        served = served_for(registry.name, args.model, str(version.version), settings or settings_of(params))
        first = served.names()[-1]
        max_rank = args.max_lora_rank or lora_rank_for(max(lora_rank(adapter), params.lora.r))
        spec = EngineSpec(
            model=engine_model(model, cache),
            served_name=f"{registry.name}-base",  # the engine's own name for the base: never given to a client
            dtype=engine_dtype(model),
            max_model_len=args.max_model_len,
            max_num_seqs=limits.max_concurrency,
            seed=0,
            loras={first: str(adapter)},
            max_lora_rank=max_rank,
            kv_cache_gib=params.evaluate.vllm.kv_cache_gib,
            host="127.0.0.1",
            port=0,
            api_key=secrets.token_urlsafe(32),  # the engine answers this process only
            runtime_lora=True,
            startup_timeout_s=params.evaluate.vllm.startup_timeout_s,
        )
        with running_engine(spec, root, cache / "engine") as engine:
            tokenizer = load_tokenizer(model.base)
            answers = EngineAnswers(engine, tokenizer)
            watch = AliasWatch(registry, args.model, served, answers, scratch, args.poll_s, model, max_rank)
            models = EngineModels(engine, tokenizer, args.max_model_len)
            serve(models, served, limits, args.host, args.port, f"{banner(served)} on vLLM", watch=watch.run)
            if not engine.alive():
                raise EngineError(f"the vLLM engine behind `serve` stopped: {engine.died()}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
