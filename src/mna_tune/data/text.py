"""Text normalisation and content ids: the one definition of "the same row"."""

from __future__ import annotations

import hashlib
import re
import unicodedata

_HORIZONTAL_SPACE = re.compile(r"[^\S\n]+")
_BLANK_LINES = re.compile(r"\n{3,}")

# Characters that are invisible or control the terminal/bidi layout, removed before any text is
# stored or compared: zero-width (U+200B-U+200D, U+2060, U+FEFF), bidi controls and marks
# (U+202A-U+202E, U+2066-U+2069, U+200E, U+200F, U+061C), and C0/C1 control characters
# (NUL, ESC, DEL, ...). Controls that Python counts as whitespace (\t \n \r, VT, FF, U+001C-U+001F,
# NEL) are not in the table: they are whitespace, so both functions below turn them into a
# space or a line break like any other whitespace.
INVISIBLE = frozenset(
    [
        0x200B,
        0x200C,
        0x200D,
        0x2060,
        0xFEFF,
        0x200E,
        0x200F,
        0x061C,
        *range(0x202A, 0x202F),
        *range(0x2066, 0x206A),
        *(code for code in (*range(0x00, 0x20), *range(0x7F, 0xA0)) if not chr(code).isspace()),
    ]
)
_INVISIBLE_RE = re.compile("[" + "".join(re.escape(chr(code)) for code in sorted(INVISIBLE)) + "]")

# Chat-format markers: text the Qwen3 tokenizer (or the chat template) turns into control tokens
# or reads as a switch. Every added token of Qwen3 (<|im_start|>, <|im_end|>, <|endoftext|>, the
# other <|...|> tokens, <think>, </think>, <tool_call>, <tool_response> and their closers;
# tests/test_text.py checks the list in qwen_tokenizer.py against this) and the soft switches
# /think and /no_think. Searched in normalised text, so a marker broken by a zero-width space
# is still found. Rows carrying one are dropped, not cleaned (docs/data.md says why).
CHAT_MARKER = re.compile(
    r"<\|[^<>|\s]{1,64}\|>|</?(?:think|tool_call|tool_response)>|/(?:no_)?think(?![A-Za-z0-9_])", re.IGNORECASE
)


def strip_invisible(text: str) -> str:
    """`text` without the INVISIBLE characters (one regex scan when there are none: the usual case)."""
    return _INVISIBLE_RE.sub("", text) if _INVISIBLE_RE.search(text) else text


def invisible_count(text: str) -> int:
    """How many INVISIBLE characters `text` holds."""
    return len(_INVISIBLE_RE.findall(text)) if _INVISIBLE_RE.search(text) else 0


def chat_marker(text: str) -> str | None:
    """The first chat-format marker in `text` (after normalisation), or None."""
    found = CHAT_MARKER.search(match_key(text))
    return found.group(0) if found else None


def match_key_counted(text: str) -> tuple[str, int]:
    """match_key(text) and how many INVISIBLE characters it removed."""
    visible = strip_invisible(text)
    return " ".join(unicodedata.normalize("NFC", visible).split()), len(text) - len(visible)


def clean_text(text: str) -> str:
    """Text as stored in chat rows: invisible and control characters removed, NFC (Hangul
    composed), lines trimmed, runs of spaces collapsed, at most one blank line. Line breaks
    survive: answers keep their lists."""
    text = unicodedata.normalize("NFC", strip_invisible(text)).replace("\r\n", "\n").replace("\r", "\n")
    lines = [_HORIZONTAL_SPACE.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def match_key(text: str) -> str:
    """Comparison key: invisible and control characters removed, NFC, every whitespace run
    (line breaks too) made one space. Two texts that differ only by whitespace or invisible
    characters share a key."""
    # str.split() splits on exactly the characters regex \s matches (str.isspace), ~5x faster
    return " ".join(unicodedata.normalize("NFC", strip_invisible(text)).split())


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


def content_id(question: str, answer: str) -> str:
    """Stable id of a QA pair: a hash of its normalised question and answer, so it does
    not depend on file names, positions or whitespace."""
    return _digest(match_key(question), match_key(answer))[:16]


def question_key(question: str) -> str:
    return _digest(match_key(question))[:16]


def unit_interval(seed: int, key: str) -> float:
    """Deterministic position of `key` in [0, 1) for a given seed."""
    return int(_digest(str(seed), key)[:15], 16) / float(16**15)
