"""Data report, written at the end of the split stage: rows per stage by source and
category, and the token lengths of the training text (system + question + no-think
header + answer + <|im_end|>, exactly what train sees) with the real Qwen3 tokenizer.

The tokenizer (built with transformers' converter, no torch) is imported only here and
only when the report is written, so the other data stages start fast.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from ..chat import training_pair
from ..params import Params, SplitPaths
from ..workspace import atomic_open, read_jsonl, write_json

BIN_TOKENS = 32  # histogram bin width


def _percentile(sorted_values: list[int], share: float) -> int:
    if not sorted_values:
        return 0
    return sorted_values[min(len(sorted_values) - 1, int(share * len(sorted_values)))]


def length_stats(lengths: list[int], max_length: int) -> dict:
    ordered = sorted(lengths)
    return {
        "rows": len(ordered),
        "mean": round(sum(ordered) / len(ordered), 1) if ordered else 0.0,
        "p50": _percentile(ordered, 0.5),
        "p90": _percentile(ordered, 0.9),
        "p99": _percentile(ordered, 0.99),
        "max": ordered[-1] if ordered else 0,
        "longer_than_max_length": sum(length > max_length for length in ordered),
        "share_longer_than_max_length": round(sum(length > max_length for length in ordered) / len(ordered), 4)
        if ordered
        else 0.0,
    }


TOKENIZE_ROWS = 2048  # rows tokenized at once: the splits are streamed, never held


def token_lengths(tokenizer, rows: list[dict]) -> list[int]:
    texts = [pair["prompt"] + pair["completion"] for pair in (training_pair(row["messages"]) for row in rows)]
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # the same ids as tokenizer(texts), without building Python lists of them
        return [len(encoding.ids) for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _split_lengths(tokenizer, path: Path, counts: Counter) -> list[int]:
    """Token lengths of a split file's rows, streamed in batches; counts rows by source/category."""
    lengths: list[int] = []
    batch: list[dict] = []
    for row in read_jsonl(path):
        counts[f"{row['source']}/{row['category']}"] += 1
        batch.append(row)
        if len(batch) == TOKENIZE_ROWS:
            lengths += token_lengths(tokenizer, batch)
            batch = []
    return lengths + token_lengths(tokenizer, batch)


def _stage_rows(upstream: dict[str, Path], splits: dict[str, Counter]) -> dict[str, dict[str, int]]:
    def load(path: Path) -> dict:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    stages = {
        "extract": {f"aihub/{k}": v for k, v in load(upstream["extract"]).get("rows_by_category", {}).items()},
        "filter": {f"aihub/{k}": v for k, v in load(upstream["filter"]).get("kept_by_category", {}).items()},
        "merge": dict(Counter(f"{r['source']}/{r['category']}" for r in read_jsonl(upstream["merge"]))),
    }
    for name, counts in splits.items():
        stages[f"split_{name}"] = dict(counts)
    return {stage: dict(sorted(counts.items())) for stage, counts in stages.items()}


def write_data_report(params: Params, tokenizer=None) -> dict:
    """The report for the splits in params.paths.split, from the upstream stages' outputs."""
    if tokenizer is None:
        from ..qwen_tokenizer import build_qwen3_tokenizer

        tokenizer = build_qwen3_tokenizer()
    return _write_report(
        params.train.max_length,
        params.paths.split,
        tokenizer,
        {
            "extract": params.paths.extract.summary,
            "filter": params.paths.filter.summary,
            "merge": params.paths.merge.rows,
        },
    )


def _write_report(max_length: int, paths: SplitPaths, tokenizer, upstream: dict[str, Path]) -> dict:
    splits: dict[str, Counter] = {name: Counter() for name in ("train", "val", "test")}
    lengths = {name: _split_lengths(tokenizer, getattr(paths, name), splits[name]) for name in splits}
    stage_rows = _stage_rows(upstream, splits)
    report: dict[str, Any] = {
        "max_length": max_length,
        "token_lengths": {name: length_stats(values, max_length) for name, values in lengths.items()},
        "rows_by_stage": {stage: sum(counts.values()) for stage, counts in stage_rows.items()},
    }  # per source and category: plots/data_rows.csv (as metrics they would flood `dvc exp show`)
    write_json(paths.data_report, report)
    with atomic_open(paths.rows_plot) as out:
        out.write("stage_source_category,rows\n")
        for stage, counts in stage_rows.items():
            for key, count in counts.items():
                out.write(f"{stage} {key},{count}\n")
    histograms = {name: Counter(length // BIN_TOKENS for length in values) for name, values in lengths.items()}
    last = max((max(h, default=0) for h in histograms.values()), default=0)
    with atomic_open(paths.lengths_plot) as out:  # rows per 32-token bin (upper edge), one column per split
        out.write("tokens,train,val,test\n")
        for bucket in range(last + 1):
            out.write(
                f"{(bucket + 1) * BIN_TOKENS},"
                + ",".join(str(histograms[name].get(bucket, 0)) for name in ("train", "val", "test"))
                + "\n"
            )
    train = report["token_lengths"]["train"]
    print(
        f"data report: train tokens p50 {train['p50']}, p99 {train['p99']}, max {train['max']}; "
        f"{train['longer_than_max_length']} train rows longer than train.max_length {max_length}"
    )
    return report
