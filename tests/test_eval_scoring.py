import re

import pytest

from mna_tune.evaluation.korean_metrics import domain_term_hits, exact_match, length_ratio, think_leak
from mna_tune.evaluation.scoring import ModelRun, compare, score_rows, summarise

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
    runs = {
        "adapter": ModelRun([(1.0, 1), (1.0, 1)], ["합병입니다", "이사회입니다"], 4, 2.0),
        "base": ModelRun([(3.0, 1), (3.0, 1)], ["인수입니다", "이사회입니다"], 4, 1.0),
    }
    predictions = {name: run.raw for name, run in runs.items()}
    scores = {name: score_rows(predictions[name], runs[name].raw, references, TERMS) for name in runs}
    overall, groups = compare(rows, runs, scores, predictions, references)
    assert overall["adapter"]["exact_match"] == 1.0 and overall["base"]["exact_match"] == 0.5
    assert overall["delta"]["exact_match"] == 0.5 and overall["delta"]["eval_loss"] == -2.0
    assert overall["adapter"]["gen_tokens_per_second"] == 2.0
    assert groups["source"]["mna"]["delta"]["exact_match"] == 1.0
    assert groups["source"]["aihub"]["delta"]["exact_match"] == 0.0
    assert set(groups["category"]) == {"M&A", "사회"}


def test_domain_term_precision_counts_the_terms_the_answer_uses():
    from mna_tune.evaluation.scoring import add_row_details

    predictions = ["합병은 이사회와 주주총회가 정합니다", "이사회입니다", ""]
    raw = ["합병은 이사회와 주주총회가 정합니다", "이사회입니다", ""]
    references = ["합병은 이사회가 승인합니다", "합병입니다", "합병입니다"]
    scores = score_rows(predictions, raw, references, TERMS)
    summary = summarise([(1.0, 1)] * 3, scores, predictions, references)
    # used 3 + 1 + 0 terms, of which 2 + 0 are the reference's; the references hold 2 + 1 + 1
    assert summary["domain_term_precision"] == pytest.approx(2 / 4)
    assert summary["domain_term_recall"] == pytest.approx(2 / 4)
    assert summary["empty_answer_share"] == pytest.approx(1 / 3)
    rows = [{} for _ in predictions]
    add_row_details(rows, {"adapter": scores})
    assert rows[0]["adapter_domain_term_precision"] == pytest.approx(2 / 3)
    assert rows[1]["adapter_domain_term_precision"] == 0.0 and rows[1]["adapter_domain_term_recall"] == 0.0
    assert rows[2]["adapter_domain_term_precision"] is None and rows[2]["adapter_empty"] == "stopped at once"


def test_no_domain_term_in_any_answer_leaves_precision_out():
    scores = score_rows(["네"], ["네"], ["합병입니다"], TERMS)
    summary = summarise([(1.0, 1)], scores, ["네"], ["합병입니다"])
    assert "domain_term_precision" not in summary and summary["domain_term_recall"] == 0.0


def test_consistency_is_the_mean_pairwise_rouge_l_of_the_samples():
    from mna_tune.evaluation.korean_metrics import rouge_l_f1

    predictions, references = ["회사를 합병했다", "합병"], ["회사를 합병했다", "합병"]
    samples = [["회사를 합병했다", "회사를 인수했다", "<think></think>회사를 합병했다"], ["합병", "합병"]]
    scores = score_rows(predictions, predictions, references, TERMS, samples)
    five_sixths = rouge_l_f1(["회사를 인수했다"], ["회사를 합병했다"])[0]
    # pairs: (합병, 인수) 5/6, (합병, 합병) 1, (인수, 합병) 5/6; the think block is stripped
    assert scores[0]["consistency_rougeL"] == pytest.approx((2 * five_sixths + 1) / 3)
    assert scores[1]["consistency_rougeL"] == 1.0
    summary = summarise([(1.0, 1)] * 2, scores, predictions, references)
    assert summary["consistency_rougeL"] == pytest.approx(((2 * five_sixths + 1) / 3 + 1) / 2, abs=1e-6)
    assert "consistency_rougeL" not in summarise(
        [(1.0, 1)] * 2, score_rows(predictions, predictions, references, TERMS), predictions, references
    )


@pytest.mark.parametrize(
    "raw, reason",
    [
        ("", "stopped at once"),
        ("\n\n", "only whitespace"),
        ("<think>\n음\n</think>\n\n", "only a think block"),
        ("답", None),
    ],
)
def test_empty_answers_have_a_reason(raw, reason):
    from mna_tune.evaluation.scoring import empty_reason

    assert empty_reason(raw) == reason


@pytest.mark.parametrize("silent", ["base", "adapter"])
def test_one_side_answering_nothing_leaves_its_figures_out_not_a_crash(tmp_path, monkeypatch, silent):
    """The first adapter that said something crashed evaluate (KeyError in write_tables: the
    base's empty answers have no domain-term precision). Either side may be the silent one."""
    from helpers import chat_rows, repo_params
    from mna_tune.evaluation.evaluate import score, write_tables
    from mna_tune.evaluation.report import render
    from mna_tune.params import GateParams
    from mna_tune.registry.promotion import decide

    monkeypatch.chdir(tmp_path)
    rows = chat_rows([("합병이란?", "합병은 이사회와 주주총회가 정합니다"), ("실사란?", "실사는 조사입니다")])
    talking = ["합병은 이사회가 정합니다", "실사는 합병 전 조사입니다"]
    raw = {"adapter": talking, "base": ["", ""]} if silent == "base" else {"adapter": ["", ""], "base": talking}
    runs = {name: ModelRun([(2.0, 2), (2.0, 2)], raw[name], 8, 1.0) for name in ("adapter", "base")}
    params = repo_params()
    result = score(params, rows, rows, runs, base_from_cache=False)
    assert "domain_term_precision" in result.overall["base" if silent == "adapter" else "adapter"]
    assert "domain_term_precision" not in result.overall[silent]
    write_tables(params, result)
    plotted = (tmp_path / params.paths.evaluate.scores_plot).read_text().splitlines()
    assert any(line.startswith("domain_term_precision,") for line in plotted)
    page = render("t", result.overall, result.by_group, [], [])
    assert "| domain-term precision |" in page and "–" in page
    gate = GateParams(metric="domain_term_precision", min_delta=0.0, min_korean_only=0.0, parity="all")
    verdict = decide(gate, result.overall["adapter"], None, result.overall["base"])
    assert not verdict.passed and ("no 'domain_term_precision'" in verdict.reason)
