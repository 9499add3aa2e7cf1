import re

import pytest

from mna_tune.evaluation.scoring import ModelRun, compare, score_rows, summarise
from mna_tune.evaluation.korean_metrics import domain_term_hits, exact_match, length_ratio, think_leak

TERMS = re.compile("주주총회|합병|이사회")


def test_row_level_helpers():
    assert exact_match("합병입니다.", " 합병입니다 ")
    assert exact_match("M&A입니다", "m&a입니다.")
    assert not exact_match("합병입니다", "인수입니다")
    assert think_leak("<think>음</think>답") and think_leak("답</think>") and not think_leak("답입니다")
    assert length_ratio("가나다", "가나 다라마바") == pytest.approx(0.5)
    assert domain_term_hits("합병은 이사회가 정합니다", "합병은 주주총회와 이사회가 승인합니다", TERMS) == (2, 3)


def test_summary_matches_hand_computed_values():
    predictions = ["합병은 이사회가 정합니다", "<think>x</think>"]
    raw = ["합병은 이사회가 정합니다", "<think>x</think>"]
    references = ["합병은 주주총회와 이사회가 승인합니다", "주주총회입니다"]
    scores = score_rows(predictions, raw, references, TERMS)
    summary = summarise([(4.0, 2), (2.0, 2)], scores, predictions, references)
    assert summary["eval_loss"] == pytest.approx(1.5)  # (4 + 2) / (2 + 2), token-weighted
    assert summary["perplexity"] == pytest.approx(4.481689, rel=1e-5)
    assert summary["think_leak_share"] == 0.5
    assert summary["domain_term_recall"] == pytest.approx(2 / 4)  # 2 of 3 terms, then 0 of 1
    assert summary["korean_only_share"] == 0.5  # the second answer's letters are Latin
    assert summary["exact_match"] == 0.0


def test_compare_gives_groups_and_deltas():
    rows = [{"source": "mna", "category": "M&A"}, {"source": "aihub", "category": "사회"}]
    references = ["합병입니다", "이사회입니다"]
    runs = {"adapter": ModelRun([(1.0, 1), (1.0, 1)], ["합병입니다", "이사회입니다"], 4, 2.0),
            "base": ModelRun([(3.0, 1), (3.0, 1)], ["인수입니다", "이사회입니다"], 4, 1.0)}
    predictions = {name: run.raw for name, run in runs.items()}
    scores = {name: score_rows(predictions[name], runs[name].raw, references, TERMS) for name in runs}
    overall, groups = compare(rows, runs, scores, predictions, references)
    assert overall["adapter"]["exact_match"] == 1.0 and overall["base"]["exact_match"] == 0.5
    assert overall["delta"]["exact_match"] == 0.5 and overall["delta"]["eval_loss"] == -2.0
    assert overall["adapter"]["gen_tokens_per_second"] == 2.0
    assert groups["source"]["mna"]["delta"]["exact_match"] == 1.0
    assert groups["source"]["aihub"]["delta"]["exact_match"] == 0.0
    assert set(groups["category"]) == {"M&A", "사회"}
