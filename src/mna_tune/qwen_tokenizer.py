"""The real Qwen3 tokenizer, built offline: BPE ranks from the qwen.tiktoken file Alibaba
ships in the `dashscope` package (sha256 checked), Qwen's split pattern, NFC, and Qwen3's
added tokens at their real ids. No torch import, so data stages can count tokens.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from .chat import CHAT_TEMPLATE

QWEN_TIKTOKEN_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
# Qwen2/Qwen3 pre-tokenizer: like GPT-4's, but digits are split one by one.
QWEN_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""  # noqa: E501 (one regex)
# Added tokens of Qwen3 in id order from 151643; the flag says whether decode() skips it.
QWEN3_ADDED_TOKENS: list[tuple[str, bool]] = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
]
QWEN3_FIRST_ADDED_ID = 151643
QWEN3_VOCAB_SIZE = 151936  # embedding rows of every Qwen3 model (padded past the 151669 tokens)


class ModelSourceError(ValueError):
    """model.base cannot be resolved or loaded."""


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
