"""filter stage: drop AI Hub rows by category, chat-format markers, echo and length, score the
rest, then drop by score.

Each dropped row is written with its reason (first matching reason wins, in the order
below) and counted by reason in metrics/filter.json. Rows dropped before scoring carry
score null: they are never sent to a scorer (an `llm` scorer would pay for them).
Rows whose question or answer carries a chat-format marker (`<|im_end|>`, `<think>`,
`/no_think`, ...: text.CHAT_MARKER) are dropped as `chat_markers`: the tokenizer would turn
them into control tokens. Invisible and control characters (text.INVISIBLE) are ignored by
every comparison here and counted in the metrics; merge removes them from the stored text.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
from tqdm import tqdm

from ..params import FilterParams, FilterPaths, Params
from ..workspace import require_input, write_json
from .columnar import DROPPED, SCORED, ParquetOut, read_batches, table
from .parallel import default_processes, ordered_map
from .scoring import make_scorer
from .text import CHAT_MARKER, invisible_count, match_key_counted

DROP_REASONS = (
    "excluded_category",
    "chat_markers",
    "echo",
    "question_too_short",
    "question_too_long",
    "answer_too_short",
    "answer_too_long",
    "unscored",
    "below_min_score",
)


SCORE_CHUNK_ROWS = 2048  # rows per worker task (and per llm batch)


class EmptyFilterResult(ValueError):
    """Every row was dropped; the message says how many each step removed."""


def pre_score_drop_reason(row: dict, params: FilterParams, excluded: set[str]) -> tuple[str | None, int]:
    """(the reason to drop `row` before scoring or None, how many invisible characters it holds)."""
    if unicodedata.normalize("NFC", row["category"]) in excluded:
        return "excluded_category", invisible_count(row["question"]) + invisible_count(row["answer"])
    question, hidden_q = match_key_counted(row["question"])  # once per row: the costly part
    answer, hidden_a = match_key_counted(row["answer"])
    hidden = hidden_q + hidden_a
    if CHAT_MARKER.search(question) or CHAT_MARKER.search(answer):
        return "chat_markers", hidden
    if question == answer:
        return "echo", hidden
    for field, text, low, high in (
        ("question", question, params.min_question_chars, params.max_question_chars),
        ("answer", answer, params.min_answer_chars, params.max_answer_chars),
    ):
        if len(text) < low:
            return f"{field}_too_short", hidden
        if len(text) > high:
            return f"{field}_too_long", hidden
    return None, hidden


def score_drop_reason(row: dict, params: FilterParams) -> str | None:
    if row["score"] is None:
        return "unscored"
    if row["score"] < params.min_score:
        return "below_min_score"
    return None


_WORKER: dict = {}  # scorer, params and excluded categories of this process (set once per worker)


def _init_worker(scorer, params: FilterParams, excluded: set[str], source: str) -> None:
    _WORKER.update(scorer=scorer, params=params, excluded=excluded, source=source)


def _rows_of(chunk) -> list[dict]:
    if isinstance(chunk, pa.RecordBatch):
        return chunk.to_pylist()
    first_line, lines = chunk
    rows = []
    for number, line in enumerate(lines, start=first_line):
        try:
            rows.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{_WORKER['source']}:{number}: not a JSON line: {exc}") from None
    return rows


def filter_chunk(chunk) -> dict:
    """Judge and score one chunk of extracted rows (an Arrow batch, or numbered JSON
    lines); returns Arrow tables of kept and dropped rows and the counts. Runs in a worker."""
    scorer, params, excluded = _WORKER["scorer"], _WORKER["params"], _WORKER["excluded"]
    rows = _rows_of(chunk)
    out: dict = {"kept": [], "dropped": [], "dropped_counts": Counter(), "kept_by_category": Counter()}
    judged = [pre_score_drop_reason(row, params, excluded) for row in rows]
    reasons = [reason for reason, _ in judged]
    out["invisible_characters"] = sum(hidden for _, hidden in judged)
    out["rows_with_invisible_characters"] = sum(1 for _, hidden in judged if hidden)
    survivors = [row for row, reason in zip(rows, reasons) if reason is None]
    wheres = [f"{row.get('file')} :: {row.get('entry')} :: {row.get('record')}" for row in survivors]
    scores = iter(scorer.score_batch([(row["question"], row["answer"]) for row in survivors], wheres))
    for row, reason in zip(rows, reasons):  # input order, so outputs do not depend on chunking
        if reason is None:
            scored = next(scores)
            row["score"], row["score_reason"] = scored if scored is not None else (None, "no label in scores CSV")
            reason = score_drop_reason(row, params)
        else:
            row["score"], row["score_reason"] = None, None
        if reason is not None:
            out["dropped_counts"][reason] += 1
            row["drop_reason"] = reason
            out["dropped"].append(row)
        else:
            out["kept_by_category"][row["category"]] += 1
            out["kept"].append(row)
    counts = {"kept_rows": len(out["kept"]), "dropped_rows": len(out["dropped"])}
    # one Arrow table per output crosses back to the main process, not thousands of dicts
    return {**out, **counts, "kept": table(out["kept"], SCORED), "dropped": table(out["dropped"], DROPPED)}


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


def run_filter(params: FilterParams, source: Path, paths: FilterPaths, processes: int | None = None) -> dict:
    scorer = make_scorer(params.scorer, params.lexicon_path, params.scores_path, params)
    excluded = {unicodedata.normalize("NFC", name) for name in params.exclude_categories}
    # The llm scorer is I/O-bound and concurrent already (threads, one cache file): one process.
    processes = 1 if params.scorer == "llm" else (processes or default_processes())
    dropped: Counter = Counter()
    kept_by_category: Counter = Counter()
    invisible: Counter = Counter()
    rows_in = kept = 0
    source = require_input(source, "extract", "the extracted rows")
    with ParquetOut(paths.kept, SCORED) as kept_out, ParquetOut(paths.dropped, DROPPED) as dropped_out:
        progress = tqdm(desc="filter", unit=" rows")
        source = Path(source)
        if source.suffix == ".parquet":
            chunks = read_batches(source, SCORE_CHUNK_ROWS)
        else:
            chunks = _line_chunks(source, SCORE_CHUNK_ROWS)
        for result in ordered_map(
            filter_chunk, chunks, processes, initializer=_init_worker, initargs=(scorer, params, excluded, str(source))
        ):
            kept_out.write(result["kept"])
            dropped_out.write(result["dropped"])
            dropped.update(result["dropped_counts"])
            kept_by_category.update(result["kept_by_category"])
            invisible.update({key: result[key] for key in ("invisible_characters", "rows_with_invisible_characters")})
            kept += result["kept_rows"]
            rows_in += result["kept_rows"] + result["dropped_rows"]
            progress.update(result["kept_rows"] + result["dropped_rows"])
        progress.close()
        if kept == 0:
            steps = ", ".join(f"{reason} {dropped[reason]}" for reason in DROP_REASONS if dropped[reason])
            raise EmptyFilterResult(
                f"filter kept 0 of {rows_in} rows from {source} (removed: {steps or 'nothing'}); "
                f"loosen filter.min_score ({params.min_score}) or filter.exclude_categories"
            )
    metrics: dict[str, Any] = {
        "rows_in": rows_in,
        "rows_kept": kept,
        "dropped": {reason: dropped[reason] for reason in DROP_REASONS},
        "kept_by_category": dict(sorted(kept_by_category.items())),
        # zero-width, bidi and control characters in the rows read (ignored by every check here)
        "rows_with_invisible_characters": invisible["rows_with_invisible_characters"],
        "invisible_characters": invisible["invisible_characters"],
    }
    write_json(paths.summary, metrics)
    print(
        f"filter: kept {kept} of {rows_in} rows; dropped "
        + ", ".join(f"{reason} {count}" for reason, count in metrics["dropped"].items() if count)
    )
    return metrics


def main(params: Params, args=None) -> None:
    run_filter(params.filter, params.paths.extract.rows, params.paths.filter)
