"""merge stage: M&A rows + filtered AI Hub rows -> de-duplicated chat rows.

Text is cleaned (text.clean_text: invisible and control characters removed, NFC,
whitespace). Rows whose question or answer carries a chat-format marker (`<|im_end|>`,
`<think>`, `/no_think`, ...: text.CHAT_MARKER) are dropped: the tokenizer would turn them
into control tokens (docs/data.md says why they are dropped, not cleaned). Exact duplicates
(same question and answer after normalisation) are removed within and across sources; then
rows whose questions are near-duplicates (similarity at least merge.near_dup_threshold, see
the similarity package) are collapsed to the first of them. The M&A file comes first, so a curated
pair wins over its AI Hub twin. Every removed row is listed: dropped rows and exact duplicates
in the duplicates file with the reason, near-duplicates with the row they duplicate and the
similarity.

Streams twice (cleaning and vectorizing on both cores): the first pass finds duplicates and
vectorizes the questions, the second writes the rows, so memory holds n-gram vectors and a
few numbers per row, never the rows.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np

from ..chat import build_messages
from ..params import MergeParams, MergePaths, Params
from ..workspace import atomic_open, dumps_line, require_input, write_json
from .columnar import read_rows
from .mna import read_mna
from .parallel import default_processes, ordered_map, worker_pool
from .similarity import (
    VECTOR_CHUNK,
    FirstSeen,
    ItemsBuilder,
    distinct_items,
    gather_rows,
    greedy_keepers,
    map_large_arrays,
    release_memory,
    vectorize_chunk,
)
from .text import CHAT_MARKER, clean_text, content_id, invisible_count

MNA_CATEGORY = "M&A"
UNIQUE, DUPLICATE, MARKED = 0, 1, 2


def _raw_rows(mna_rows: list[dict], mna_path: Path, aihub_rows: Path) -> Iterator[tuple]:
    """(source, category, question, answer, origin, invisible characters already removed), M&A first."""
    for row in mna_rows:  # read_mna cleaned these (cleaning again changes nothing)
        yield (
            "mna",
            MNA_CATEGORY,
            row["question"],
            row["answer"],
            {"file": str(mna_path), "record": row["record"]},
            row["invisible"],
        )
    for row in read_rows(aihub_rows):
        origin = {key: row[key] for key in ("file", "entry", "record", "subset", "kind")}
        origin["score"] = row.get("score")
        yield "aihub", row["category"], row["question"], row["answer"], origin, 0


def _chunks(rows: Iterator[tuple], keep: deque) -> Iterator[list[tuple[str, str]]]:
    """(question, answer) lists for the workers; the rest of each row waits in `keep`."""
    batch: list[tuple] = []
    for row in rows:
        batch.append(row)
        if len(batch) == VECTOR_CHUNK:
            keep.append(batch)
            yield [(row[2], row[3]) for row in batch]
            batch = []
    if batch:
        keep.append(batch)
        yield [(row[2], row[3]) for row in batch]


def _clean(chunk: list[tuple[str, str]], vectors: bool) -> tuple[list[tuple], np.ndarray | None, np.ndarray | None]:
    """In a worker: per row (question, answer, content id, chat marker or None, invisible
    characters removed). With `vectors` (the first pass): per row the last three only, and the
    n-gram vectors of the cleaned questions."""
    out = []
    for question, answer in chunk:
        clean_question, clean_answer = clean_text(question), clean_text(answer)
        found = CHAT_MARKER.search(clean_question) or CHAT_MARKER.search(clean_answer)
        out.append(
            (
                clean_question,
                clean_answer,
                content_id(clean_question, clean_answer),
                found.group(0) if found else None,
                invisible_count(question) + invisible_count(answer),
            )
        )
    if not vectors:
        return out, None, None
    indptr, indices = vectorize_chunk([row[0] for row in out])
    return [row[2:] for row in out], indptr, indices  # the texts stay in the worker


def _check(chunk: list[tuple[str, str]]) -> tuple[list[tuple], None, None]:
    """_clean's first pass without vectors (merge.near_dup_threshold null)."""
    return [row[2:] for row in _clean(chunk, False)[0]], None, None


def collapse_near_duplicates(rows: list[dict], threshold: float) -> tuple[list[dict], list[dict]]:
    """Greedy, in row order: a row goes when its question is near one already kept, so
    a chain A~B~C with A and C apart keeps A and C. Returns (kept, collapsed pairs).
    (The stage itself streams; this is the same rule on rows held in memory.)"""
    from ..chat import question_of

    questions = [question_of(row["messages"]) for row in rows]
    keeper, similarity, _, _ = greedy_keepers(distinct_items(questions), threshold)
    collapsed = [
        {
            "kept_id": rows[k]["id"],
            "kept_source": rows[k]["source"],
            "kept_question": questions[k],
            "removed_id": rows[j]["id"],
            "removed_source": rows[j]["source"],
            "removed_question": questions[j],
            "similarity": float(similarity[j]),
            "origin": rows[j].get("origin"),
        }
        for j, k in enumerate(keeper.tolist())
        if k >= 0
    ]
    return [row for row, k in zip(rows, keeper.tolist()) if k < 0], collapsed


def run_merge(
    mna_path: Path, aihub_rows: Path, params: MergeParams, paths: MergePaths, processes: int | None = None
) -> dict:
    mna_rows = read_mna(Path(mna_path))
    aihub_rows = require_input(aihub_rows, "filter", "the filtered rows")
    processes = processes or default_processes()
    threshold = params.near_dup_threshold
    map_large_arrays()
    with worker_pool(processes) as pool:
        return _merge(mna_rows, Path(mna_path), aihub_rows, threshold, paths, processes, pool)


def _merge(
    mna_rows: list[dict],
    mna_path: Path,
    aihub_rows: Path,
    threshold: float | None,
    paths: MergePaths,
    processes: int,
    pool,
) -> dict:
    # first pass: chat markers, exact duplicates (written as they come), the questions' vectors
    status = bytearray()  # per row: UNIQUE, DUPLICATE or MARKED
    sources: list[str] = []  # per row
    rows_in: Counter = Counter()
    duplicates: Counter = Counter()
    marked: Counter = Counter()
    invisible: Counter = Counter()
    seen = FirstSeen()  # content id -> first row with it
    builder = ItemsBuilder()
    waiting: deque = deque()
    work = partial(_clean, vectors=True) if threshold is not None else _check
    with atomic_open(paths.duplicates) as duplicates_out:
        chunks = _chunks(_raw_rows(mna_rows, mna_path, aihub_rows), waiting)
        for cleaned, indptr, indices in ordered_map(work, chunks, processes, pool=pool):
            batch = waiting.popleft()
            start = len(status)
            rows = np.arange(start, start + len(batch))
            marks = [marker for _, marker, _ in cleaned]
            plain = np.asarray([marker is None for marker in marks], bool)
            first = np.full(len(batch), -1, np.int64)
            first[plain] = seen.first(
                np.asarray([int(row_id, 16) for (row_id, marker, _) in cleaned if marker is None], np.uint64),
                rows[plain],
            )
            unique = plain & (first == rows)
            for index, ((row_id, marker, hidden), (source, _, _, _, origin, removed)) in enumerate(zip(cleaned, batch)):
                rows_in[source] += 1
                sources.append(source)
                if hidden + removed:
                    invisible["rows"] += 1
                    invisible["characters"] += hidden + removed
                if marker is not None:
                    marked[source] += 1
                    duplicates_out.write(
                        dumps_line(
                            {
                                "reason": "chat_markers",
                                "marker": marker,
                                "id": None,
                                "kept_source": None,
                                "source": source,
                                "origin": origin,
                            }
                        )
                    )
                elif not unique[index]:
                    kept_source = sources[first[index]]
                    duplicates[f"{kept_source}->{source}"] += 1
                    duplicates_out.write(
                        dumps_line(
                            {
                                "reason": "exact_duplicate",
                                "id": row_id,
                                "kept_source": kept_source,
                                "source": source,
                                "origin": origin,
                            }
                        )
                    )
            status.extend(np.where(unique, UNIQUE, np.where(plain, DUPLICATE, MARKED)).astype(np.uint8).tobytes())
            if threshold is not None and unique.any():
                builder.add(*gather_rows(indptr, indices, np.flatnonzero(unique)))
    del seen, sources
    unique_rows = status.count(UNIQUE)
    search: dict = {}
    keeper = np.full(unique_rows, -1, np.int64)
    similarity = np.zeros(unique_rows)
    if threshold is not None:
        items = builder.finish()
        release_memory()
        keeper, similarity, stats, cut = greedy_keepers(items, threshold, threads=processes)
        search = {**stats.as_metrics(), "neighbour_lists_cut": cut}
        del items
        release_memory()

    # second pass: write the kept rows and, for each collapsed one, the row it duplicates
    pending = np.bincount(keeper[keeper >= 0], minlength=len(keeper))  # collapsed rows still to come, per keeper
    remembered: dict[int, tuple[str, str, str]] = {}
    kept: Counter = Counter()
    near: Counter = Counter()
    unique = 0
    waiting.clear()
    rows_to_clean = (row for row, state in zip(_raw_rows(mna_rows, mna_path, aihub_rows), status) if state == UNIQUE)
    work = partial(_clean, vectors=False)
    with atomic_open(paths.rows) as rows_out, atomic_open(paths.near_duplicates) as near_out:
        for cleaned in ordered_map(work, _chunks(rows_to_clean, waiting), processes, pool=pool):
            for (question, answer, row_id, _, _), (source, category, _, _, origin, _) in zip(
                cleaned[0], waiting.popleft()
            ):
                keeper_row = int(keeper[unique])
                if keeper_row < 0:
                    rows_out.write(
                        dumps_line(
                            {
                                "id": row_id,
                                "source": source,
                                "category": category,
                                "messages": build_messages(question, answer),
                                "origin": origin,
                            }
                        )
                    )
                    kept[source] += 1
                    if pending[unique]:
                        remembered[unique] = (row_id, source, question)
                else:
                    kept_id, kept_source, kept_question = remembered[keeper_row]
                    pending[keeper_row] -= 1
                    if not pending[keeper_row]:
                        del remembered[keeper_row]
                    near[f"{kept_source}->{source}"] += 1
                    near_out.write(
                        dumps_line(
                            {
                                "kept_id": kept_id,
                                "kept_source": kept_source,
                                "kept_question": kept_question,
                                "removed_id": row_id,
                                "removed_source": source,
                                "removed_question": question,
                                "similarity": float(similarity[unique]),
                                "origin": origin,
                            }
                        )
                    )
                unique += 1
    metrics = {
        "rows_in": dict(sorted(rows_in.items())),
        "rows_out": sum(kept.values()),
        "rows_out_by_source": dict(sorted(kept.items())),
        "exact_duplicates_removed": sum(duplicates.values()),
        "exact_duplicates_by_pair": dict(sorted(duplicates.items())),
        "near_duplicates_removed": sum(near.values()),
        "near_duplicates_by_pair": dict(sorted(near.items())),
        "near_dup_threshold": threshold,
        # rows dropped because question or answer carries <|im_end|>, <think>, /no_think, ...
        "chat_marker_rows_dropped": {source: marked[source] for source in ("aihub", "mna")},
        # zero-width, bidi and control characters removed from the stored text
        "rows_with_invisible_characters": invisible["rows"],
        "invisible_characters_removed": invisible["characters"],
        "near_duplicate_search": search,
    }
    write_json(paths.summary, metrics)
    print(
        f"merge: {metrics['rows_out']} chat rows ({dict(kept)}), {metrics['exact_duplicates_removed']} exact and "
        f"{metrics['near_duplicates_removed']} near duplicates removed"
        + (f", {sum(marked.values())} rows with chat markers dropped" if marked else "")
        + (
            ""
            if not search or search["exact"]
            else f"; near-duplicate search bounded: {search['candidate_pairs_skipped']} candidate pairs skipped"
        )
    )
    return metrics


def main(params: Params, args=None) -> None:
    run_merge(params.data.mna_path, params.paths.filter.kept, params.merge, params.paths.merge)
