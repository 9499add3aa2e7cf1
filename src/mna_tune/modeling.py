"""Resolve `model.base` into a tokenizer and a causal LM, and the LoRA config.

`tiny-qwen3` is the embedded default: the real Qwen3 tokenizer, built offline from the
BPE ranks Alibaba ships in the `dashscope` package, and a toy-sized Qwen3ForCausalLM
initialised from a fixed seed. A hub id or a local folder loads a real model, never
with `trust_remote_code`. Quantization and LoRA settings go through TRL's own
`ModelConfig` helpers, so they mean exactly what they mean in TRL's scripts.
"""

from __future__ import annotations

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

    return Qwen3Config(
        vocab_size=QWEN3_VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
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
