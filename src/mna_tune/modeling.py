"""Resolve `model.base` into a tokenizer and a causal LM, and the LoRA config.

`tiny-qwen3` is the embedded default: the real Qwen3 tokenizer, built offline from the
BPE ranks Alibaba ships in the `dashscope` package, and a toy-sized Qwen3ForCausalLM
initialised from a fixed seed. A hub id or a local folder loads a real model, never
with `trust_remote_code`. Quantization and LoRA settings go through TRL's own
`ModelConfig` helpers, so they mean exactly what they mean in TRL's scripts.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from .params import LoraParams, ModelParams
from .qwen_tokenizer import QWEN3_VOCAB_SIZE, ModelSourceError, build_qwen3_tokenizer

TINY = "tiny-qwen3"


@dataclass(frozen=True)
class ModelSource:
    kind: Literal["tiny", "hub", "folder"]
    name: str


def resolve_base(base: str) -> ModelSource:
    if base == TINY:
        return ModelSource("tiny", TINY)
    path = Path(base).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"model.base '{base}' is a path but holds no config.json: not a model folder")
        return ModelSource("folder", str(path.resolve()))
    if base.startswith((".", "/", "~")) or base.count("/") > 1:
        raise ModelSourceError(f"model.base '{base}': model folder not found")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", base):
        return ModelSource("hub", base)
    raise ModelSourceError(
        f"model.base '{base}' is neither '{TINY}', an existing model folder nor a hub id like 'Qwen/Qwen3-8B'"
    )


def tiny_qwen3_config():
    from transformers import Qwen3Config

    # 128 wide with weights drawn at std 0.1 (and embeddings from the tokens' text, below): the
    # narrowest shape whose LoRA learns the sample's Korean in a few CPU minutes
    # (docs/benchmarks.md#the-embedded-default-learns: 64 wide at std 0.02 never left 11.8 nats).
    return Qwen3Config(
        vocab_size=QWEN3_VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        initializer_range=0.1,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,  # vLLM's CPU attention takes 32 and up
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=151643,
        eos_token_id=151645,
        pad_token_id=151643,
    )


def token_bytes() -> list[bytes]:
    """Each BPE token's bytes, by id (the ranks in qwen.tiktoken are the ids)."""
    import base64

    from .qwen_tokenizer import qwen_tiktoken_path

    pieces: list[bytes] = []
    for line in qwen_tiktoken_path().read_bytes().splitlines():
        token, rank = line.split()
        assert int(rank) == len(pieces), "qwen.tiktoken lists its ranks in order"
        pieces.append(base64.b64decode(token))
    return pieces


# How much of a tiny-qwen3 embedding row each part of its token's text makes up (below).
TINY_EMBEDDING_PARTS = {"characters": 1.0, "block": 0.5, "script": 1.0, "own": 1.0}


# The first word of a character's Unicode name stands for its script (HANGUL, LATIN, CJK, ...).
SCRIPTS = ("HANGUL", "LATIN", "CJK", "DIGIT", "HIRAGANA", "KATAKANA", "CYRILLIC", "GREEK", "ARABIC", "SPACE")


@functools.cache
def script_of(point: int) -> int:
    import unicodedata

    if not 0 <= point < 0x110000 or 0xD800 <= point < 0xE000:
        return len(SCRIPTS)  # a byte fragment
    word = unicodedata.name(chr(point), "?").split(" ")[0]
    return SCRIPTS.index(word) if word in SCRIPTS else len(SCRIPTS)


def tiny_embeddings(config, seed: int) -> torch.Tensor:
    return _tiny_embeddings(config.hidden_size, config.vocab_size, config.initializer_range, seed).clone()


@functools.lru_cache(maxsize=2)  # built once per process (about 2 s)
def _tiny_embeddings(hidden: int, rows: int, initializer_range: float, seed: int) -> torch.Tensor:
    """tiny-qwen3's embedding table (tied with its output layer), built from the tokens' text
    rather than drawn at random: a row is the mean of a random vector per character of the
    token, one per 128-codepoint Unicode block and one per script (Hangul, Latin, CJK, ...),
    plus a random vector of the token's own, scaled to the usual row norm. Tokens that share
    characters or a script then point in similar directions, as in a trained model's table,
    so a LoRA can raise "Korean answer tokens" together; with independent random rows the
    logits of 1,000 answer tokens cannot be moved together through a 128-wide hidden state
    (the adapter stalled near 10 nats, uniform being 11.93). Bytes of a character split
    across tokens count as characters of their own. Seeded: the same table everywhere."""
    generator = torch.Generator().manual_seed(seed)
    tables = {
        name: torch.randn(size, hidden, generator=generator)
        for name, size in (("characters", 65_536), ("block", 0x110000 >> 7), ("script", len(SCRIPTS) + 1))
    }
    own = torch.randn(rows, hidden, generator=generator)
    index: dict[str, list[list[int]]] = {name: [] for name in tables}
    for piece in token_bytes():
        text = piece.decode("utf-8", errors="ignore")
        points = [ord(c) for c in text] or [0xDC00 + b for b in piece]  # a lone fragment: its bytes
        index["characters"].append([p % 65_536 for p in points])
        index["block"].append([p >> 7 for p in points])
        index["script"].append([script_of(p) for p in points])
    table = TINY_EMBEDDING_PARTS["own"] * own
    for name, ids in index.items():
        flat = torch.tensor([i for row in ids for i in row])
        owner = torch.repeat_interleave(torch.arange(len(ids)), torch.tensor([len(row) for row in ids]))
        mean = torch.zeros(len(ids), hidden).index_add_(0, owner, tables[name][flat])
        mean /= torch.tensor([len(row) for row in ids]).unsqueeze(1)
        table[: len(ids)] += TINY_EMBEDDING_PARTS[name] * mean
    return table * (initializer_range * hidden**0.5 / table.norm(dim=1, keepdim=True))


def load_tokenizer(base: str):
    source = resolve_base(base)
    if source.kind == "tiny":
        return build_qwen3_tokenizer()
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source.name, trust_remote_code=False)
    except OSError as exc:
        raise ModelSourceError(f"cannot load the tokenizer of model.base '{base}': {exc}") from None


def dtype_name(dtype: str) -> str:
    """model.dtype with `auto` resolved: bf16 on a CUDA card that has it, else float32."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"


def check_device_support(model: ModelParams) -> None:
    """Fail before any work when params ask for what this machine cannot do."""
    cuda = torch.cuda.is_available()
    if model.quantization != "none":
        if not cuda:
            raise ModelSourceError(
                f"model.quantization: {model.quantization} needs a CUDA GPU (bitsandbytes) and "
                "this machine has none; set model.quantization: none"
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ModelSourceError(
                f"model.quantization: {model.quantization} needs bitsandbytes: pip install -e '.[cuda]'"
            )
        if resolve_base(model.base).kind == "tiny":
            raise ModelSourceError("model.quantization applies to real models (a hub id or a folder), not tiny-qwen3")
    if model.attn_implementation == "flash_attention_2":
        if not cuda:
            raise ModelSourceError("model.attn_implementation: flash_attention_2 needs a CUDA GPU; use sdpa")
        if importlib.util.find_spec("flash_attn") is None:
            raise ModelSourceError("model.attn_implementation: flash_attention_2 needs the flash-attn package")


def trl_model_config(model: ModelParams, lora: LoraParams | None = None):
    """The same settings as TRL's ModelConfig (4-bit = nf4 + double quantisation, compute in
    the model's dtype), so TRL's helpers build the quantization and LoRA configs."""
    from trl import ModelConfig

    options: dict[str, Any] = {}
    if lora is not None:
        options = dict(
            use_peft=True,
            lora_r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            lora_target_modules=list(lora.target_modules),
            lora_task_type="CAUSAL_LM",
        )
    return ModelConfig(
        model_name_or_path=model.base,
        dtype=dtype_name(model.dtype),
        attn_implementation=model.attn_implementation,
        load_in_4bit=model.quantization == "4bit",
        load_in_8bit=model.quantization == "8bit",
        bnb_4bit_quant_type="nf4",
        use_bnb_nested_quant=True,
        **options,
    )


def lora_config(lora: LoraParams, model: ModelParams):
    from trl import get_peft_config

    return get_peft_config(trl_model_config(model, lora))


def _device_map():
    """One GPU per process under accelerate/torchrun (DDP); otherwise spread over the GPUs."""
    if not torch.cuda.is_available():
        return None
    if "LOCAL_RANK" in os.environ:
        return {"": int(os.environ["LOCAL_RANK"])}
    return "auto"


def load_base_model(model: ModelParams, for_training: bool = False):
    check_device_support(model)
    source = resolve_base(model.base)
    dtype = getattr(torch, dtype_name(model.dtype))
    if source.kind == "tiny":
        from transformers import Qwen3ForCausalLM

        # A fixed seed makes the "base model" a reproducible artefact, not a download.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(model.tiny_seed)
            tiny = Qwen3ForCausalLM(tiny_qwen3_config())
        embeddings: Any = tiny.get_input_embeddings()  # tied: the output layer's too
        with torch.no_grad():
            embeddings.weight.copy_(tiny_embeddings(tiny.config, model.tiny_seed))
        tiny.config._name_or_path = TINY
        return tiny.to(dtype)
    from transformers import AutoModelForCausalLM
    from trl import get_quantization_config

    try:
        loaded = AutoModelForCausalLM.from_pretrained(
            source.name,
            dtype=dtype,
            trust_remote_code=False,
            attn_implementation=model.attn_implementation,
            quantization_config=get_quantization_config(trl_model_config(model)),
            device_map=_device_map(),
        )
    except OSError as exc:
        raise ModelSourceError(f"cannot load model.base '{model.base}': {exc}") from None
    if model.quantization != "none" and for_training:
        from peft import prepare_model_for_kbit_training

        loaded = prepare_model_for_kbit_training(loaded)  # norms in fp32, input grads for the LoRA path
    return loaded


def load_adapter_model(model: ModelParams, adapter_dir: Path):
    """Base model (loaded as in training) with the trained adapter, ready for inference."""
    from peft import PeftModel

    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise ModelSourceError(f"{adapter_dir}: no adapter_config.json (run the train stage first)")
    return PeftModel.from_pretrained(load_base_model(model), str(adapter_dir)).eval()
