"""filter stage: score every AI Hub row, then drop by category, echo, length and score.

Each dropped row is written with its reason (first matching reason wins, in the order
below) and counted by reason in metrics/filter.json.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import orjson
from tqdm import tqdm

from ..params import FilterParams
from .io import atomic_open, dumps_line, write_json
from .parallel import default_processes, ordered_map
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


SCORE_CHUNK_ROWS = 2048  # rows per worker task (and per llm batch)


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


_WORKER: dict = {}  # scorer, params and excluded categories of this process (set once per worker)


def _init_worker(scorer, params: FilterParams, excluded: set[str], source: str) -> None:
    _WORKER.update(scorer=scorer, params=params, excluded=excluded, source=source)


def filter_chunk(chunk: tuple[int, list[str]]) -> dict:
    """Score and judge one chunk of extracted JSON lines; returns the output lines and
    counts. Runs in a worker: only text crosses process boundaries."""
    first_line, lines = chunk
    scorer, params, excluded = _WORKER["scorer"], _WORKER["params"], _WORKER["excluded"]
    rows = []
    for number, line in enumerate(lines, start=first_line):
        try:
            rows.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{_WORKER['source']}:{number}: not a JSON line: {exc}") from None
    wheres = [f"{row.get('file')} :: {row.get('entry')} :: {row.get('record')}" for row in rows]
    scores = scorer.score_batch([(row["question"], row["answer"]) for row in rows], wheres)
    out: dict = {"kept": [], "dropped": [], "dropped_counts": Counter(), "kept_by_category": Counter()}
    for row, scored in zip(rows, scores):
        row["score"], row["score_reason"] = scored if scored is not None else (None, "no label in scores CSV")
        reason = drop_reason(row, params, excluded)
        if reason is not None:
            out["dropped_counts"][reason] += 1
            out["dropped"].append(dumps_line({**row, "drop_reason": reason}))
        else:
            out["kept_by_category"][row["category"]] += 1
            out["kept"].append(dumps_line(row))
    return out


def _line_chunks(path: Path, size: int):
    chunk: list[str] = []
    first = 1
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            if not chunk:
                first = number
            chunk.append(line)
            if len(chunk) == size:
                yield first, chunk
                chunk = []
    if chunk:
        yield first, chunk


def run_filter(params: FilterParams, paths: FilterPaths = FilterPaths(), processes: int | None = None) -> dict:
    scorer = make_scorer(params.scorer, params.lexicon_path, params.scores_path, params)
    excluded = {unicodedata.normalize("NFC", name) for name in params.exclude_categories}
    # The llm scorer is I/O-bound and concurrent already (threads, one cache file): one process.
    processes = 1 if params.scorer == "llm" else (processes or default_processes())
    dropped: Counter = Counter()
    kept_by_category: Counter = Counter()
    rows_in = kept = 0
    with atomic_open(paths.kept) as kept_out, atomic_open(paths.dropped) as dropped_out:
        progress = tqdm(desc="filter", unit=" rows")
        chunks = _line_chunks(Path(paths.rows_in), SCORE_CHUNK_ROWS)
        for result in ordered_map(filter_chunk, chunks, processes, initializer=_init_worker,
                                  initargs=(scorer, params, excluded, str(paths.rows_in))):
            kept_out.writelines(result["kept"])
            dropped_out.writelines(result["dropped"])
            dropped.update(result["dropped_counts"])
            kept_by_category.update(result["kept_by_category"])
            kept += len(result["kept"])
            rows_in += len(result["kept"]) + len(result["dropped"])
            progress.update(len(result["kept"]) + len(result["dropped"]))
        progress.close()
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
