"""Resolve `model.base` into a tokenizer and a causal LM, and build the LoRA config.

`tiny-qwen3` is the embedded default: the real Qwen3 tokenizer, built offline from the
BPE ranks Alibaba ships in the `dashscope` package, and a toy-sized Qwen3ForCausalLM
initialised from a fixed seed. A hub id or a local folder loads a real model, never
with `trust_remote_code`.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from .qwen_tokenizer import (  # noqa: F401  (re-exported: callers import them from here)
    QWEN3_FIRST_ADDED_ID,
    QWEN3_VOCAB_SIZE,
    ModelSourceError,
    build_qwen3_tokenizer,
)

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
        head_dim=16,
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


def torch_dtype(dtype: str) -> torch.dtype:
    if dtype == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def check_device_support(base: str, quantization: str = "none", attn_implementation: str = "sdpa") -> None:
    """Fail before any work when params ask for what this machine cannot do."""
    cuda = torch.cuda.is_available()
    if quantization != "none":
        if not cuda:
            raise ModelSourceError(f"model.quantization: {quantization} needs a CUDA GPU (bitsandbytes) and this "
                                   "machine has none; set model.quantization: none")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ModelSourceError(f"model.quantization: {quantization} needs bitsandbytes: pip install -e '.[cuda]'")
        if resolve_base(base).kind == "tiny":
            raise ModelSourceError("model.quantization applies to real models (a hub id or a folder), not tiny-qwen3")
    if attn_implementation == "flash_attention_2":
        if not cuda:
            raise ModelSourceError("model.attn_implementation: flash_attention_2 needs a CUDA GPU; use sdpa")
        if importlib.util.find_spec("flash_attn") is None:
            raise ModelSourceError("model.attn_implementation: flash_attention_2 needs the flash-attn package")


def quantization_config(quantization: str):
    if quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def _device_map():
    """One GPU per process under accelerate/torchrun (DDP); otherwise spread over the GPUs."""
    import os

    if not torch.cuda.is_available():
        return None
    if "LOCAL_RANK" in os.environ:
        return {"": int(os.environ["LOCAL_RANK"])}
    return "auto"


def load_base_model(base: str, tiny_seed: int = 0, dtype: str = "auto", quantization: str = "none",
                    attn_implementation: str = "sdpa", for_training: bool = False):
    check_device_support(base, quantization, attn_implementation)
    source = resolve_base(base)
    if source.kind == "tiny":
        from transformers import Qwen3ForCausalLM

        # A fixed seed makes the "base model" a reproducible artefact, not a download.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(tiny_seed)
            model = Qwen3ForCausalLM(tiny_qwen3_config())
        model.config._name_or_path = TINY
        return model.to(torch_dtype(dtype))
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            source.name, dtype=torch_dtype(dtype), trust_remote_code=False, attn_implementation=attn_implementation,
            quantization_config=quantization_config(quantization), device_map=_device_map())
    except OSError as exc:
        raise ModelSourceError(f"cannot load model.base '{base}': {exc}") from None
    if quantization != "none" and for_training:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)  # norms in fp32, input grads for the LoRA path
    return model


def lora_config(r: int, alpha: int, dropout: float, target_modules: list[str]):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                      bias="none", task_type="CAUSAL_LM")


def load_adapter_model(base: str, adapter_dir: Path, tiny_seed: int = 0, dtype: str = "auto",
                       quantization: str = "none", attn_implementation: str = "sdpa"):
    """Base model (loaded as in training) with the trained adapter, ready for inference."""
    from peft import PeftModel

    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise ModelSourceError(f"{adapter_dir}: no adapter_config.json (run the train stage first)")
    base_model = load_base_model(base, tiny_seed, dtype, quantization, attn_implementation)
    model = PeftModel.from_pretrained(base_model, str(adapter_dir))
    return model.eval()
