"""Relevance scorers for the filter stage: every AI Hub row gets a 0-100 score and a reason.

`lexicon` (default) is deterministic: weighted M&A/finance/law terms from a TSV file in the
repo. `column` joins an external labelled CSV, like the original LLM labelling step. `llm`
asks an OpenAI-compatible endpoint (see llm_scorer.py), so callers should hand it rows in
batches through `score_batch`, which it sends concurrently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import InputError, require_regular_file
from ..lexicon import Lexicon
from .llm_scorer import LlmScorer
from .text import match_key

if TYPE_CHECKING:
    from ..params import FilterParams


class Scorer(Protocol):
    def score(self, question: str, answer: str) -> tuple[int, str] | None:
        """(score, reason), or None when the scorer has no score for the row."""

    def score_batch(
        self, pairs: list[tuple[str, str]], wheres: list[str] | None = None
    ) -> Sequence[tuple[int, str] | None]:
        """score() for each (question, answer), in input order. `wheres` optionally labels
        each row ("file :: entry :: record") for scorers that can fail on one row."""


def _step5(value: float) -> int:
    return int(min(100, max(0, value)) // 5 * 5)


@dataclass(frozen=True)
class LexiconScorer:
    lexicon: Lexicon

    @classmethod
    def from_tsv(cls, path: Path) -> LexiconScorer:
        return cls(Lexicon.from_tsv(path))

    def score(self, question: str, answer: str) -> tuple[int, str]:
        weights = self.lexicon.weights
        text = match_key(question) + "\n" + match_key(answer)
        found = sorted(set(self.lexicon.pattern.findall(text)), key=lambda term: (-weights[term], term))
        if not found:
            return 0, "no domain terms"
        return _step5(sum(weights[term] for term in found)), ", ".join(f"{term}(+{weights[term]})" for term in found)

    def score_batch(self, pairs: list[tuple[str, str]], wheres: list[str] | None = None) -> list[tuple[int, str]]:
        return [self.score(question, answer) for question, answer in pairs]


@dataclass(frozen=True)
class ColumnScorer:
    labels: dict[tuple[str, str], tuple[int, str]]

    @classmethod
    def from_csv(cls, path: Path) -> ColumnScorer:
        import pandas as pd  # only the column scorer needs it

        require_regular_file(path, "filter.scores_path")
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        except FileNotFoundError:
            raise InputError(str(path), "scores CSV not found (filter.scores_path)") from None
        missing = {"question", "answer", "score"} - set(frame.columns)
        if missing:
            raise InputError(str(path), f"missing column(s) {sorted(missing)}; found {list(frame.columns)}")
        labels: dict[tuple[str, str], tuple[int, str]] = {}
        row: Any  # a pandas row tuple: its fields are the CSV columns
        for index, row in enumerate(frame.itertuples(index=False), start=2):  # line 1 is the header
            try:
                value = float(row.score)
            except ValueError:
                raise InputError(str(path), f"score '{row.score}' is not a number", record=f"line {index}") from None
            if not 0 <= value <= 100:
                raise InputError(str(path), f"score {value} is outside 0-100", record=f"line {index}")
            key = (match_key(row.question), match_key(row.answer))
            reason = getattr(row, "reason", "") or "labelled score"
            if key in labels and labels[key][0] != round(value):
                raise InputError(
                    str(path), "the same question and answer carry two different scores", record=f"line {index}"
                )
            labels[key] = (round(value), reason)
        return cls(labels)

    def score(self, question: str, answer: str) -> tuple[int, str] | None:
        return self.labels.get((match_key(question), match_key(answer)))

    def score_batch(
        self, pairs: list[tuple[str, str]], wheres: list[str] | None = None
    ) -> list[tuple[int, str] | None]:
        return [self.score(question, answer) for question, answer in pairs]


def make_scorer(kind: str, lexicon_path: Path, scores_path: Path | None, params: FilterParams | None = None) -> Scorer:
    """`params` (the whole filter section) is needed only by the `llm` scorer."""
    if kind == "lexicon":
        return LexiconScorer.from_tsv(lexicon_path)
    if kind == "column":
        assert scores_path is not None  # params validation guarantees it
        return ColumnScorer.from_csv(scores_path)
    if kind == "llm":
        if params is None:
            raise ValueError("filter.scorer 'llm' needs the filter params: make_scorer(..., params=params)")
        return LlmScorer.from_params(params)
    raise ValueError(f"unknown filter.scorer '{kind}'")
