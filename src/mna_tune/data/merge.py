"""merge stage: M&A rows + filtered AI Hub rows -> de-duplicated chat rows.

Exact duplicates (same question and answer after whitespace normalisation) are removed
within and across sources; then rows whose questions are near-duplicates (similarity at
least merge.near_dup_threshold, see similarity.py) are collapsed to the first of them.
The M&A file comes first, so a curated pair wins over its AI Hub twin. Every removed row
is listed with the row it duplicates (and, for near-duplicates, the similarity).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..chat import build_messages, question_of
from ..params import MergeParams, MergePaths, Params
from ..workspace import atomic_open, dumps_line, write_json, write_jsonl
from .columnar import read_rows
from .mna import read_mna
from .similarity import similar_pairs
from .text import clean_text, content_id

MNA_CATEGORY = "M&A"


def _candidates(mna_path: Path, aihub_rows: Path):
    for row in read_mna(mna_path):
        origin = {"file": str(mna_path), "record": row["record"]}
        yield "mna", MNA_CATEGORY, row["question"], row["answer"], origin
    for row in read_rows(aihub_rows):
        origin = {key: row[key] for key in ("file", "entry", "record", "subset", "kind")}
        origin["score"] = row.get("score")
        yield "aihub", row["category"], clean_text(row["question"]), clean_text(row["answer"]), origin


def collapse_near_duplicates(rows: list[dict], threshold: float) -> tuple[list[dict], list[dict]]:
    """Greedy, in row order: a row goes when its question is near one already kept, so
    a chain A~B~C with A and C apart keeps A and C. Returns (kept, collapsed pairs)."""
    questions = [question_of(row["messages"]) for row in rows]
    neighbours: dict[int, list[tuple[int, float]]] = {}
    for i, j, similarity in similar_pairs(questions, threshold):
        neighbours.setdefault(j, []).append((i, similarity))
    kept_flags = [True] * len(rows)
    collapsed = []
    for j in range(len(rows)):
        matches = [(similarity, -i) for i, similarity in neighbours.get(j, []) if kept_flags[i]]
        if not matches:
            continue
        similarity, minus_i = max(matches)  # the most similar kept row, the earliest on ties
        kept_flags[j] = False
        keeper = rows[-minus_i]
        collapsed.append({"kept_id": keeper["id"], "kept_source": keeper["source"],
                          "kept_question": questions[-minus_i], "removed_id": rows[j]["id"],
                          "removed_source": rows[j]["source"],
                          "removed_question": questions[j], "similarity": similarity, "origin": rows[j].get("origin")})
    return [row for row, keep in zip(rows, kept_flags) if keep], collapsed


def run_merge(mna_path: Path, aihub_rows: Path, params: MergeParams, paths: MergePaths) -> dict:
    seen: dict[str, str] = {}
    rows_in: Counter = Counter()
    duplicates: Counter = Counter()
    unique: list[dict] = []  # filtered rows: small enough to hold (see similarity.py on scale)
    with atomic_open(paths.duplicates) as dup_out:
        for source, category, question, answer, origin in _candidates(Path(mna_path), Path(aihub_rows)):
            rows_in[source] += 1
            row_id = content_id(question, answer)
            if row_id in seen:
                duplicates[f"{seen[row_id]}->{source}"] += 1
                dup_out.write(dumps_line({"id": row_id, "kept_source": seen[row_id], "source": source,
                                          "origin": origin}))
                continue
            seen[row_id] = source
            unique.append({"id": row_id, "source": source, "category": category,
                           "messages": build_messages(question, answer), "origin": origin})
    collapsed: list[dict] = []
    kept_rows = unique
    if params.near_dup_threshold is not None:
        kept_rows, collapsed = collapse_near_duplicates(unique, params.near_dup_threshold)
    write_jsonl(paths.near_duplicates, collapsed)
    write_jsonl(paths.rows, kept_rows)
    kept = Counter(row["source"] for row in kept_rows)
    near = Counter(f"{pair['kept_source']}->{pair['removed_source']}" for pair in collapsed)
    metrics = {
        "rows_in": dict(sorted(rows_in.items())),
        "rows_out": len(kept_rows),
        "rows_out_by_source": dict(sorted(kept.items())),
        "exact_duplicates_removed": sum(duplicates.values()),
        "exact_duplicates_by_pair": dict(sorted(duplicates.items())),
        "near_duplicates_removed": len(collapsed),
        "near_duplicates_by_pair": dict(sorted(near.items())),
        "near_dup_threshold": params.near_dup_threshold,
    }
    write_json(paths.metrics, metrics)
    print(f"merge: {metrics['rows_out']} chat rows ({dict(kept)}), {metrics['exact_duplicates_removed']} exact and "
          f"{len(collapsed)} near duplicates removed")
    return metrics


def main(params: Params, args=None) -> None:
    run_merge(params.data.mna_path, params.paths.filter.kept, params.merge, params.paths.merge)
