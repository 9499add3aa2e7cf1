"""merge stage: M&A rows + filtered AI Hub rows -> de-duplicated chat rows.

Exact duplicates (same question and answer after whitespace normalisation) are removed
within and across sources. The M&A file comes first, so a curated pair wins over its
AI Hub twin; every removed row is listed with the id it duplicates.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..chat import build_messages
from .io import atomic_open, dumps_line, read_jsonl, write_json
from .mna import read_mna
from .text import clean_text, content_id

MNA_CATEGORY = "M&A"


@dataclass(frozen=True)
class MergePaths:
    aihub_rows: Path = Path("data/interim/filtered.jsonl")
    merged: Path = Path("data/interim/merged.jsonl")
    duplicates: Path = Path("data/interim/merge_duplicates.jsonl")
    metrics: Path = Path("metrics/merge.json")


def _candidates(mna_path: Path, aihub_rows: Path):
    for row in read_mna(mna_path):
        origin = {"file": str(mna_path), "record": row["record"]}
        yield "mna", MNA_CATEGORY, row["question"], row["answer"], origin
    for row in read_jsonl(aihub_rows):
        origin = {key: row[key] for key in ("file", "entry", "record", "subset", "kind")}
        origin["score"] = row.get("score")
        yield "aihub", row["category"], clean_text(row["question"]), clean_text(row["answer"]), origin


def run_merge(mna_path: Path, paths: MergePaths = MergePaths()) -> dict:
    seen: dict[str, str] = {}
    rows_in: Counter = Counter()
    kept: Counter = Counter()
    duplicates: Counter = Counter()
    with atomic_open(paths.merged) as merged_out, atomic_open(paths.duplicates) as dup_out:
        for source, category, question, answer, origin in _candidates(Path(mna_path), paths.aihub_rows):
            rows_in[source] += 1
            row_id = content_id(question, answer)
            if row_id in seen:
                duplicates[f"{seen[row_id]}->{source}"] += 1
                dup_out.write(dumps_line({"id": row_id, "kept_source": seen[row_id], "source": source,
                                          "origin": origin}))
                continue
            seen[row_id] = source
            kept[source] += 1
            merged_out.write(dumps_line({"id": row_id, "source": source, "category": category,
                                         "messages": build_messages(question, answer), "origin": origin}))
    metrics = {
        "rows_in": dict(sorted(rows_in.items())),
        "rows_out": sum(kept.values()),
        "rows_out_by_source": dict(sorted(kept.items())),
        "exact_duplicates_removed": sum(duplicates.values()),
        "exact_duplicates_by_pair": dict(sorted(duplicates.items())),
    }
    write_json(paths.metrics, metrics)
    print(f"merge: {metrics['rows_out']} chat rows ({dict(kept)}), "
          f"{metrics['exact_duplicates_removed']} exact duplicates removed")
    return metrics
