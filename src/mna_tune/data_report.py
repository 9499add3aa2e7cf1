"""Data report, written at the end of the split stage: rows per stage by source and
category, and the token lengths of the training text (system + question + no-think
header + answer + <|im_end|>, exactly what train sees) with the real Qwen3 tokenizer.

Outside data/ on purpose: it needs the tokenizer (transformers' converter), which the
light data rooms do not import.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .chat import training_pair
from .data.io import atomic_open, read_jsonl, write_json

BIN_TOKENS = 32  # histogram bin width


@dataclass(frozen=True)
class ReportPaths:
    extract_metrics: Path = Path("metrics/extract.json")
    filter_metrics: Path = Path("metrics/filter.json")
    merged: Path = Path("data/interim/merged.jsonl")
    processed: Path = Path("data/processed")
    metrics: Path = Path("metrics/data_report.json")
    rows_plot: Path = Path("plots/data_rows.csv")
    lengths_plot: Path = Path("plots/token_lengths.csv")


def _percentile(sorted_values: list[int], share: float) -> int:
    if not sorted_values:
        return 0
    return sorted_values[min(len(sorted_values) - 1, int(share * len(sorted_values)))]


def length_stats(lengths: list[int], max_length: int) -> dict:
    ordered = sorted(lengths)
    return {
        "rows": len(ordered),
        "mean": round(sum(ordered) / len(ordered), 1) if ordered else 0.0,
        "p50": _percentile(ordered, 0.5), "p90": _percentile(ordered, 0.9), "p99": _percentile(ordered, 0.99),
        "max": ordered[-1] if ordered else 0,
        "longer_than_max_length": sum(length > max_length for length in ordered),
        "share_longer_than_max_length": round(sum(length > max_length for length in ordered) / len(ordered), 4)
        if ordered else 0.0,
    }


def token_lengths(tokenizer, rows: list[dict]) -> list[int]:
    texts = [pair["prompt"] + pair["completion"] for pair in (training_pair(row["messages"]) for row in rows)]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []


def _stage_rows(paths: ReportPaths, splits: dict[str, list[dict]]) -> dict[str, dict[str, int]]:
    def load(path: Path) -> dict:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    stages = {
        "extract": {f"aihub/{k}": v for k, v in load(paths.extract_metrics).get("rows_by_category", {}).items()},
        "filter": {f"aihub/{k}": v for k, v in load(paths.filter_metrics).get("kept_by_category", {}).items()},
        "merge": dict(Counter(f"{r['source']}/{r['category']}" for r in read_jsonl(paths.merged))),
    }
    for name, rows in splits.items():
        stages[f"split_{name}"] = dict(Counter(f"{r['source']}/{r['category']}" for r in rows))
    return {stage: dict(sorted(counts.items())) for stage, counts in stages.items()}


def write_data_report(max_length: int, paths: ReportPaths = ReportPaths(), tokenizer=None) -> dict:
    if tokenizer is None:
        from .qwen_tokenizer import build_qwen3_tokenizer

        tokenizer = build_qwen3_tokenizer()
    splits = {name: list(read_jsonl(paths.processed / f"{name}.jsonl")) for name in ("train", "val", "test")}
    lengths = {name: token_lengths(tokenizer, rows) for name, rows in splits.items()}
    stage_rows = _stage_rows(paths, splits)
    report = {
        "max_length": max_length,
        "token_lengths": {name: length_stats(values, max_length) for name, values in lengths.items()},
        "rows_by_stage": {stage: sum(counts.values()) for stage, counts in stage_rows.items()},
    }  # per source and category: plots/data_rows.csv (as metrics they would flood `dvc exp show`)
    write_json(paths.metrics, report)
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
            out.write(f"{(bucket + 1) * BIN_TOKENS}," + ",".join(str(histograms[name].get(bucket, 0))
                                                              for name in ("train", "val", "test")) + "\n")
    train = report["token_lengths"]["train"]
    print(f"data report: train tokens p50 {train['p50']}, p99 {train['p99']}, max {train['max']}; "
          f"{train['longer_than_max_length']} train rows longer than train.max_length {max_length}")
    return report
