"""The single source of truth for chat formatting: system prompt and Qwen3 no-think turns.

Split files hold clean messages (no `/no_think`, no think tags, no special tokens).
Training, evaluation and serving all render them here. The no-think convention is the
one Qwen3's own chat template applies with `enable_thinking=False`: the assistant turn
opens with an empty think block, `<think>\\n\\n</think>\\n\\n`, and nothing is appended to
the user turn. This module imports nothing heavy: the data stages use it too.
"""

from __future__ import annotations

import json
import unicodedata

SYSTEM_PROMPT = "당신은 금융,법률 및 M&A 분야 전문가입니다.\n사용자 질문에 대해 반드시 한국어로만 답변하세요."

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
EMPTY_THINK = "<think>\n\n</think>\n\n"


def build_messages(question: str, answer: str | None = None, system_prompt: str = SYSTEM_PROMPT) -> list[dict]:
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": question}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


# Characters that show nothing: Hangul fillers are letters to Unicode but blank to a reader.
INVISIBLE = {"\u115f", "\u1160", "\u3164", "\uffa0"}


def is_blank(text: str) -> bool:
    """Whether a question shows nothing: whitespace, zero-width and format characters
    (U+200B, U+2060, U+FEFF, ...) and Hangul fillers only. Every door that refuses an empty
    question (the servers, `ask`) refuses these too."""
    return all(c.isspace() or c in INVISIBLE or unicodedata.category(c) == "Cf" for c in text)


def question_of(messages: list[dict]) -> str:
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")


def answer_of(messages: list[dict]) -> str:
    if messages[-1]["role"] != "assistant":
        raise ValueError("the conversation does not end with an assistant message")
    return messages[-1]["content"]


def _turn(role: str, content: str) -> str:
    return f"{IM_START}{role}\n{content}{IM_END}\n"


def render_prompt(messages: list[dict]) -> str:
    """Everything the model sees before it answers: system and user turns, then the
    assistant header with the empty think block. A trailing assistant message is ignored."""
    turns = messages[:-1] if messages and messages[-1]["role"] == "assistant" else messages
    for message in turns:
        if message["role"] not in ("system", "user", "assistant"):
            raise ValueError(f"unsupported chat role {message['role']!r}")
    return "".join(_turn(m["role"], m["content"]) for m in turns) + f"{IM_START}assistant\n{EMPTY_THINK}"


def _plain_ids(tokenizer, text: str) -> list[int]:
    """Token ids of `text` as plain text: the backend's normaliser, pre-tokenizer and BPE,
    with no added-token matching at all, so "<|im_end|>" or "<think>" typed in a message
    stays characters. For text without such strings the ids are what the full tokenizer
    gives (added tokens are the only step skipped)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer: prompt_ids needs its backend pipeline")
    if backend.normalizer is not None:
        text = backend.normalizer.normalize_str(text)
    pieces = [piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str(text)] if backend.pre_tokenizer else [text]
    return [token.id for piece in pieces for token in backend.model.tokenize(piece)]


def prompt_ids(tokenizer, messages: list[dict], enable_thinking: bool = False) -> list[int]:
    """render_prompt as token ids, safe against injected control tokens: only the template's
    own markers (<|im_start|>, <|im_end|>, the think tags) are added-token ids; roles and
    contents are encoded as plain text. For clean text this equals
    `tokenizer(render_prompt(messages), add_special_tokens=False).input_ids`: each segment
    between two markers is encoded exactly as the full string's segment would be.
    With `enable_thinking` the assistant header has no empty think block (the model may think)."""
    marker = tokenizer.convert_tokens_to_ids
    start, end = marker(IM_START), marker(IM_END)
    turns = messages[:-1] if messages and messages[-1]["role"] == "assistant" else messages
    ids: list[int] = []
    for message in turns:
        if message["role"] not in ("system", "user", "assistant"):
            raise ValueError(f"unsupported chat role {message['role']!r}")
        ids += [start, *_plain_ids(tokenizer, f"{message['role']}\n{message['content']}"), end]
        ids += _plain_ids(tokenizer, "\n")
    ids += [start, *_plain_ids(tokenizer, "assistant\n")]
    if not enable_thinking:  # EMPTY_THINK, marker by marker
        ids += [marker("<think>"), *_plain_ids(tokenizer, "\n\n"), marker("</think>"), *_plain_ids(tokenizer, "\n\n")]
    return ids


def render_completion(answer: str) -> str:
    """What the model learns to write: the answer, closed by the end-of-turn token."""
    return f"{answer}{IM_END}"


def training_pair(messages: list[dict], think_in_loss: bool = False) -> dict[str, str]:
    """SFT prompt/completion for one conversation. By default the empty think block is
    part of the prompt (masked): the adapter learns answers without unlearning how to think.
    With `think_in_loss` it moves into the completion and is trained like the answer."""
    prompt = render_prompt(messages)
    completion = render_completion(answer_of(messages))
    if think_in_loss:
        prompt, completion = prompt[: -len(EMPTY_THINK)], EMPTY_THINK + completion
    return {"prompt": prompt, "completion": completion}


def strip_think(text: str) -> str:
    """A generated answer without any (empty or not) think block the model produced."""
    if "</think>" in text:
        text = text.split("</think>", 1)[1]
    return text.replace("<think>", "").strip()


# The same format as a Jinja chat template, for tokenizers we build (tiny-qwen3) and for
# exported folders, so `apply_chat_template(..., enable_thinking=False)` and servers such as
# vLLM render exactly what render_prompt renders. Written for this project: it covers
# system/user/assistant turns, which is all this pipeline produces.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}"
    "{%- set content = message.content %}"
    "{%- if '</think>' in content %}{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{%- if loop.last %}"
    "{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + content + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

# What a server renders when a client sends chat messages: exactly the training prompt by
# default (the training system prompt when the client sends none, the empty think block
# unless the client asks for thinking with enable_thinking: true). The vLLM engine serves
# with it (`--chat-template`).
SERVING_CHAT_TEMPLATE = (
    "{%- if messages and messages[0].role != 'system' %}"
    "{{- '<|im_start|>system\\n' + " + json.dumps(SYSTEM_PROMPT, ensure_ascii=False) + " + '<|im_end|>\\n' }}"
    "{%- endif %}" + CHAT_TEMPLATE.split("{%- if add_generation_prompt %}")[0] + "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if not (enable_thinking is defined and enable_thinking) %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
