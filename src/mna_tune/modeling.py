"""Resolve `model.base` into a tokenizer and a causal LM, and build the LoRA config.

`tiny-qwen3` is the embedded default: the real Qwen3 tokenizer, built offline from the
BPE ranks Alibaba ships in the `dashscope` package, and a toy-sized Qwen3ForCausalLM
initialised from a fixed seed. A hub id or a local folder loads a real model, never
with `trust_remote_code`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from .chat import CHAT_TEMPLATE

TINY = "tiny-qwen3"
QWEN_TIKTOKEN_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
# Qwen2/Qwen3 pre-tokenizer: like GPT-4's, but digits are split one by one.
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# Added tokens of Qwen3 in id order from 151643; the flag says whether decode() skips it.
QWEN3_ADDED_TOKENS: list[tuple[str, bool]] = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True),
    ("<|quad_start|>", True), ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True),
    ("<|vision_pad|>", True), ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False), ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False),
]
QWEN3_FIRST_ADDED_ID = 151643
QWEN3_VOCAB_SIZE = 151936  # embedding rows of every Qwen3 model (padded past the 151669 tokens)


class ModelSourceError(ValueError):
    """model.base cannot be resolved or loaded."""


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


def qwen_tiktoken_path() -> Path:
    spec = importlib.util.find_spec("dashscope")  # located, not imported: we only need its data file
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError("the 'dashscope' package (which ships qwen.tiktoken) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise ModelSourceError(f"{path}: qwen.tiktoken not found in the installed dashscope package")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != QWEN_TIKTOKEN_SHA256:
        raise ModelSourceError(f"{path}: sha256 {digest} is not Qwen's BPE file ({QWEN_TIKTOKEN_SHA256})")
    return path


def build_qwen3_tokenizer():
    """The Qwen3 tokenizer without network access: BPE ranks from qwen.tiktoken, NFC
    normaliser, Qwen's split pattern, and Qwen3's added tokens at their real ids."""
    from tokenizers import AddedToken, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(vocab_file=str(qwen_tiktoken_path()), pattern=QWEN_PATTERN).converted()
    backend.normalizer = normalizers.NFC()
    if backend.get_vocab_size() != QWEN3_FIRST_ADDED_ID:
        raise ModelSourceError(f"qwen.tiktoken holds {backend.get_vocab_size()} ranks, expected {QWEN3_FIRST_ADDED_ID}")
    for token, special in QWEN3_ADDED_TOKENS:  # one by one: ids follow the list order
        backend.add_tokens([AddedToken(token, special=special, normalized=False)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=40960,
        clean_up_tokenization_spaces=False,
    )
    for offset, (token, _) in enumerate(QWEN3_ADDED_TOKENS):
        if tokenizer.convert_tokens_to_ids(token) != QWEN3_FIRST_ADDED_ID + offset:
            raise ModelSourceError(f"built tokenizer put {token} at the wrong id")
    return tokenizer


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
