"""Korean-correct answer metrics, built on the libraries that do the work.

- ROUGE-L F1 over Kiwi morphemes: `rouge_score`'s LCS scorer with a kiwipiepy tokenizer
  (its default tokenizer drops every Hangul character, so it cannot score Korean).
- chrF: sacrebleu's corpus chrF, character n-grams, script-agnostic.
- Korean-only: letters at least 95 % Hangul and no Chinese or Japanese script, the
  failure the original base model showed ("较多" inside a Korean answer).
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

# Kiwi tags dropped before ROUGE: punctuation and symbols (SL foreign words, SH hanja and
# SN numbers are kept: they carry content).
_PUNCT_TAGS = {"SF", "SP", "SS", "SSO", "SSC", "SE", "SO", "SW", "SB"}
KOREAN_ONLY_MIN_HANGUL = 0.95


@lru_cache(maxsize=1)
def _kiwi():
    from kiwipiepy import Kiwi

    return Kiwi()


def morphemes(text: str) -> list[str]:
    return [token.form for token in _kiwi().tokenize(text) if token.tag not in _PUNCT_TAGS]


class KiwiMorphemeTokenizer:
    """The tokenizer interface rouge_score expects: tokenize(text) -> list of tokens."""

    def tokenize(self, text: str) -> list[str]:
        return morphemes(text)


def rouge_l_f1(predictions: list[str], references: list[str]) -> list[float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=KiwiMorphemeTokenizer())
    return [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references, strict=True)]


def chrf(predictions: list[str], references: list[str]) -> float:
    from sacrebleu.metrics import CHRF

    return CHRF().corpus_score(predictions, [references]).score


def _is_hangul(char: str) -> bool:
    code = ord(char)
    return (
        0xAC00 <= code <= 0xD7A3
        or 0x1100 <= code <= 0x11FF
        or 0x3130 <= code <= 0x318F
        or 0xA960 <= code <= 0xA97F
        or 0xD7B0 <= code <= 0xD7FF
    )


def _is_cjk_or_kana(char: str) -> bool:
    code = ord(char)
    return (
        0x4E00 <= code <= 0x9FFF
        or 0x3400 <= code <= 0x4DBF
        or 0xF900 <= code <= 0xFAFF
        or 0x20000 <= code <= 0x2FA1F
        or 0x3040 <= code <= 0x30FF
        or 0x31F0 <= code <= 0x31FF
        or 0xFF66 <= code <= 0xFF9F
    )


def hangul_share(text: str) -> float:
    letters = [char for char in text if unicodedata.category(char).startswith("L")]
    if not letters:
        return 0.0
    return sum(_is_hangul(char) for char in letters) / len(letters)


def is_korean_only(text: str) -> bool:
    return hangul_share(text) >= KOREAN_ONLY_MIN_HANGUL and not any(_is_cjk_or_kana(char) for char in text)


_TRAILING_PUNCT = ".!?。 "


def normalise_answer(text: str) -> str:
    """For exact match: NFC, whitespace collapsed, Latin lower-cased, final punctuation dropped."""
    collapsed = " ".join(unicodedata.normalize("NFC", text).split()).lower()
    return collapsed.rstrip(_TRAILING_PUNCT)


def exact_match(prediction: str, reference: str) -> bool:
    return normalise_answer(prediction) == normalise_answer(reference)


def think_leak(raw_output: str) -> bool:
    """Any think tag in what the model wrote after the (already closed) empty think block:
    a no-think adapter must not start thinking, nor leave a dangling tag."""
    return "<think>" in raw_output or "</think>" in raw_output


def length_ratio(prediction: str, reference: str) -> float:
    reference_length = len("".join(reference.split()))
    return len("".join(prediction.split())) / reference_length if reference_length else 0.0


def domain_terms(text: str, pattern) -> set[str]:
    """Lexicon terms (a compiled alternation, longest first) found in `text`."""
    return set(pattern.findall(" ".join(unicodedata.normalize("NFC", text).split())))


def domain_term_hits(prediction: str, reference: str, pattern) -> tuple[int, int]:
    """(reference terms found in the prediction, reference terms): summed into a micro recall."""
    wanted = domain_terms(reference, pattern)
    return len(wanted & domain_terms(prediction, pattern)), len(wanted)


def domain_term_counts(prediction: str, reference: str, pattern) -> tuple[int, int, int]:
    """(terms both use, terms of the reference, terms of the prediction), distinct terms:
    summed into a micro recall (shared / reference) and precision (shared / prediction)."""
    wanted, used = domain_terms(reference, pattern), domain_terms(prediction, pattern)
    return len(wanted & used), len(wanted), len(used)


def mean_pairwise_rouge_l(answers: list[str]) -> float | None:
    """How alike several answers to one question are: the mean ROUGE-L F1 (Kiwi morphemes)
    over every unordered pair; identical answers (an empty pair included) count 1.0.
    None for fewer than two answers."""
    pairs = [(a, b) for i, a in enumerate(answers) for b in answers[i + 1 :]]
    if not pairs:
        return None
    differing = [(a, b) for a, b in pairs if normalise_answer(a) != normalise_answer(b)]
    scores = rouge_l_f1([a for a, _ in differing], [b for _, b in differing]) if differing else []
    return (len(pairs) - len(differing) + sum(scores)) / len(pairs)
