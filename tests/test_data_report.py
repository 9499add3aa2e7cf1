"""The split stage's data report: token lengths with the real Qwen3 tokenizer and rows
per stage by source and category, as DVC metrics and plots."""

import csv
import json

from helpers import QA, chat_rows, repo_params
from mna_tune.chat import training_pair
from mna_tune.data.report import length_stats, write_data_report
from mna_tune.params import ExtractPaths, FilterPaths, MergePaths, SplitPaths
from mna_tune.workspace import write_jsonl


def test_length_stats_against_hand_computed_values():
    stats = length_stats([10, 20, 30, 40, 500], max_length=384)
    assert stats == {
        "rows": 5,
        "mean": 120.0,
        "p50": 30,
        "p90": 500,
        "p99": 500,
        "max": 500,
        "longer_than_max_length": 1,
        "share_longer_than_max_length": 0.2,
    }


def test_report_counts_real_qwen3_tokens_and_rows_per_stage(tmp_path, qwen3_tokenizer):
    out = tmp_path / "processed"
    paths = SplitPaths(
        train=out / "train.jsonl",
        val=out / "val.jsonl",
        test=out / "test.jsonl",
        leakage=tmp_path / "leakage.jsonl",
        summary=tmp_path / "split.json",
        data_report=tmp_path / "report.json",
        rows_plot=tmp_path / "rows.csv",
        lengths_plot=tmp_path / "lengths.csv",
    )
    params = repo_params(train={"max_length": 150})
    params = params.model_copy(
        update={
            "paths": params.paths.model_copy(
                update={
                    "split": paths,
                    "extract": ExtractPaths(
                        rows=tmp_path / "x",
                        rejects=tmp_path / "x",
                        report=tmp_path / "x",
                        summary=tmp_path / "extract.json",
                    ),
                    "filter": FilterPaths(
                        kept=tmp_path / "x", dropped=tmp_path / "x", summary=tmp_path / "filter.json"
                    ),
                    "merge": MergePaths(
                        rows=tmp_path / "merged.jsonl",
                        duplicates=tmp_path / "x",
                        near_duplicates=tmp_path / "x",
                        summary=tmp_path / "x",
                    ),
                }
            )
        }
    )
    (tmp_path / "extract.json").write_text(json.dumps({"rows_by_category": {"사회": 7, "종교": 2}}))
    (tmp_path / "filter.json").write_text(json.dumps({"kept_by_category": {"사회": 3}}))
    long_answer = "합병 " * 400  # far beyond 150 tokens
    train = chat_rows(QA[:3] + [("긴 답의 질문?", long_answer)])
    write_jsonl(tmp_path / "merged.jsonl", train + chat_rows(QA[3:]))
    write_jsonl(paths.train, train)
    write_jsonl(paths.val, [])
    write_jsonl(paths.test, chat_rows(QA[3:]))

    report = write_data_report(params, qwen3_tokenizer)
    expected = sorted(
        len(qwen3_tokenizer(p["prompt"] + p["completion"], add_special_tokens=False).input_ids)
        for p in (training_pair(row["messages"]) for row in train)
    )
    assert report["token_lengths"]["train"]["max"] == expected[-1] > 400
    assert report["token_lengths"]["train"]["longer_than_max_length"] == sum(n > 150 for n in expected) == 1
    assert report["token_lengths"]["val"]["rows"] == 0
    assert report["rows_by_stage"] == {
        "extract": 9,
        "filter": 3,
        "merge": 5,
        "split_train": 4,
        "split_val": 0,
        "split_test": 1,
    }
    assert json.loads(paths.data_report.read_text()) == report

    rows = list(csv.DictReader(paths.rows_plot.open(encoding="utf-8")))
    assert {"stage_source_category": "extract aihub/종교", "rows": "2"} in rows
    assert {"stage_source_category": "split_train mna/M&A", "rows": "4"} in rows
    lengths = list(csv.DictReader(paths.lengths_plot.open(encoding="utf-8")))
    assert sum(int(r["train"]) for r in lengths) == 4 and sum(int(r["test"]) for r in lengths) == 1
    assert int(lengths[-1]["tokens"]) >= expected[-1]  # the last bin holds the longest row
