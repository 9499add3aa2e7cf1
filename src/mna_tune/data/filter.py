"""filter stage: score every AI Hub row, then drop by category, echo, length and score.

Each dropped row is written with its reason (first matching reason wins, in the order
below) and counted by reason in metrics/filter.json.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..params import FilterParams
from .io import atomic_open, dumps_line, read_jsonl, write_json
from .scoring import make_scorer
from .text import is_echo, match_key

DROP_REASONS = (
    "excluded_category",
    "echo",
    "question_too_short",
    "question_too_long",
    "answer_too_short",
    "answer_too_long",
    "unscored",
    "below_min_score",
)


@dataclass(frozen=True)
class FilterPaths:
    rows_in: Path = Path("data/interim/extracted.jsonl")
    kept: Path = Path("data/interim/filtered.jsonl")
    dropped: Path = Path("data/interim/filter_dropped.jsonl")
    metrics: Path = Path("metrics/filter.json")


class EmptyFilterResult(ValueError):
    """Every row was dropped; the message says how many each step removed."""


def drop_reason(row: dict, params: FilterParams, excluded: set[str]) -> str | None:
    if unicodedata.normalize("NFC", row["category"]) in excluded:
        return "excluded_category"
    if is_echo(row["question"], row["answer"]):
        return "echo"
    for field, low, high in (("question", params.min_question_chars, params.max_question_chars),
                             ("answer", params.min_answer_chars, params.max_answer_chars)):
        length = len(match_key(row[field]))
        if length < low:
            return f"{field}_too_short"
        if length > high:
            return f"{field}_too_long"
    if row["score"] is None:
        return "unscored"
    if row["score"] < params.min_score:
        return "below_min_score"
    return None


def run_filter(params: FilterParams, paths: FilterPaths = FilterPaths()) -> dict:
    scorer = make_scorer(params.scorer, params.lexicon_path, params.scores_path)
    excluded = {unicodedata.normalize("NFC", name) for name in params.exclude_categories}
    dropped: Counter = Counter()
    kept_by_category: Counter = Counter()
    rows_in = kept = 0
    with atomic_open(paths.kept) as kept_out, atomic_open(paths.dropped) as dropped_out:
        for row in tqdm(read_jsonl(paths.rows_in), desc="filter", unit=" rows"):
            rows_in += 1
            scored = scorer.score(row["question"], row["answer"])
            row["score"], row["score_reason"] = scored if scored is not None else (None, "no label in scores CSV")
            reason = drop_reason(row, params, excluded)
            if reason is not None:
                dropped[reason] += 1
                dropped_out.write(dumps_line({**row, "drop_reason": reason}))
                continue
            kept += 1
            kept_by_category[row["category"]] += 1
            kept_out.write(dumps_line(row))
        if kept == 0:
            steps = ", ".join(f"{reason} {dropped[reason]}" for reason in DROP_REASONS if dropped[reason])
            raise EmptyFilterResult(
                f"filter kept 0 of {rows_in} rows from {paths.rows_in} (removed: {steps or 'nothing'}); "
                f"loosen filter.min_score ({params.min_score}) or filter.exclude_categories"
            )
    metrics = {
        "rows_in": rows_in,
        "rows_kept": kept,
        "dropped": {reason: dropped[reason] for reason in DROP_REASONS},
        "kept_by_category": dict(sorted(kept_by_category.items())),
    }
    write_json(paths.metrics, metrics)
    print(f"filter: kept {kept} of {rows_in} rows; dropped "
          + ", ".join(f"{reason} {count}" for reason, count in metrics["dropped"].items() if count))
    return metrics
