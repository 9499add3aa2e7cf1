"""The memorisation probe, the "overfit a batch" check ML engineers run first: the adapter
answers K fixed training questions and the share whose greedy answer equals the training
answer exactly is reported beside the test-split figures. A broken loss mask, chat template,
stop token or LoRA wiring shows here as zero, whatever the test split says.

The K rows are chosen by a seeded rule that does not depend on file order: the training rows
sorted by sha256("<seed>:<row id>"), the first K. Their ids are recorded.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..chat import answer_of, question_of, strip_think
from ..workspace import read_jsonl


def probe_rows(train: Path, k: int, seed: int) -> list[dict]:
    rows = list(read_jsonl(train))
    return sorted(rows, key=lambda row: hashlib.sha256(f"{seed}:{row['id']}".encode()).hexdigest())[:k]


def normalised(text: str) -> str:
    return " ".join(text.split())


def memorisation(rows: list[dict], raw_answers: list[str]) -> dict:
    """The share of training answers reproduced exactly (whitespace runs count as one space),
    the row ids, and the first answer that differs."""
    answers = [strip_think(text) for text in raw_answers]
    exact = [normalised(answer) == normalised(answer_of(row["messages"])) for row, answer in zip(rows, answers)]
    first_miss = next((i for i, same in enumerate(exact) if not same), None)
    return {
        "rows": len(rows),
        "exact": sum(exact),
        "exact_share": round(sum(exact) / len(rows), 6) if rows else 0.0,
        "ids": [row["id"] for row in rows],
        "first_miss": None
        if first_miss is None
        else {
            "id": rows[first_miss]["id"],
            "question": question_of(rows[first_miss]["messages"]),
            "expected": answer_of(rows[first_miss]["messages"]),
            "answered": answers[first_miss],
        },
    }
