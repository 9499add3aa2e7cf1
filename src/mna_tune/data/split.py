"""split stage: deterministic, stable under additions, leak-free on identical questions.

A row's split is a function of its normalised question and `split.seed` only: adding or
editing other rows never moves it, and rows sharing a question always land together.
"""

from __future__ import annotations

from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from ..chat import question_of
from ..params import SplitParams
from .io import atomic_open, dumps_line, read_jsonl, write_json
from .text import question_key, unit_interval

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitPaths:
    merged: Path = Path("data/interim/merged.jsonl")
    out_dir: Path = Path("data/processed")
    metrics: Path = Path("metrics/split.json")


def assign_split(question: str, params: SplitParams) -> str:
    position = unit_interval(params.seed, question_key(question))
    if position < params.test_size:
        return "test"
    if position < params.test_size + params.val_size:
        return "val"
    return "train"


def run_split(params: SplitParams, paths: SplitPaths = SplitPaths()) -> dict:
    counts: Counter = Counter()
    by_source: Counter = Counter()
    with ExitStack() as stack:  # all three files are committed together, or none
        handles = {name: stack.enter_context(atomic_open(paths.out_dir / f"{name}.jsonl")) for name in SPLITS}
        for row in read_jsonl(paths.merged):
            name = assign_split(question_of(row["messages"]), params)
            handles[name].write(dumps_line(row))
            counts[name] += 1
            by_source[f"{name}_{row['source']}"] += 1
        empty = [name for name in ("train", "test") if counts[name] == 0]
        if empty:
            raise ValueError(
                f"split left {' and '.join(empty)} empty ({sum(counts.values())} rows in {paths.merged}); "
                "add data or raise split.test_size"
            )
    metrics = {"rows": {name: counts[name] for name in SPLITS}, "rows_by_source": dict(sorted(by_source.items()))}
    write_json(paths.metrics, metrics)
    print("split: " + ", ".join(f"{name} {counts[name]}" for name in SPLITS))
    return metrics
