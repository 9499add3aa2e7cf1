"""reports/eval.md: figures rounded for people, check marks no garbage answer can earn,
empty answers named with their reason, the judge's section."""

from mna_tune.evaluation.report import delta, number, render

SANE = {"korean_only_share": 0.95}
GARBAGE = {"korean_only_share": 0.0}


def overall(adapter_extra: dict, base_extra: dict | None = None, judge: dict | None = None) -> dict:
    base = {
        "eval_loss": 11.9,
        "perplexity": 147_000.0,
        "rougeL_f1": 0.01,
        "chrf": 1.0,
        "length_ratio": 0.5,
        "think_leak_share": 0.5,
        "consistency_rougeL": 0.2,
        **(base_extra or {}),
    }
    adapter = {
        "eval_loss": 11.8,
        "perplexity": 133_000.0,
        "rougeL_f1": 0.02,
        "chrf": 2.25,
        "length_ratio": 0.9,
        "think_leak_share": 0.0,
        "consistency_rougeL": 0.9,
        **adapter_extra,
    }
    result = {
        "base": base,
        "adapter": adapter,
        "delta": {key: adapter[key] - base[key] for key in adapter if key in base},
    }
    if judge:
        result["judge"] = judge
    return result


def table_row(text: str, label: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"| {label} |"))


def test_figures_are_rounded_for_people():
    assert number("perplexity", 12.3456) == "12.3" and number("perplexity", 148_923.1) == "1.49e+05"
    assert number("perplexity", -17_400.0, signed=True) == "-1.74e+04"
    assert number("eval_loss", 11.78654) == "11.787" and number("chrf", 21.4567) == "21.5"
    assert number("rougeL_f1", 0.123456) == "0.123" and number("rougeL_f1", 0.0001, signed=True) == "+0.000"
    assert number("judge_rubric_mean", 3.456) == "3.46" and number("rougeL_f1", None) == "–"


def test_garbage_answers_earn_no_check_mark():
    text = render(
        "t", overall({**GARBAGE, "korean_only_share": 0.0}, {"korean_only_share": 0.0}), {}, [], [], sanity_floor=0.9
    )
    assert "✓" not in table_row(text, "ROUGE-L F1 (Kiwi)") and "✓" not in table_row(text, "chrF")
    assert "✓" not in table_row(text, "think-tag leaks")  # an answer without think tags can still be garbage
    assert "✓" not in table_row(text, "consistency (ROUGE-L between samples)")  # the same garbage every time
    assert table_row(text, "eval loss (answer)").endswith("-0.100 ✓ |")  # scored on the references
    assert table_row(text, "perplexity") == "| perplexity | 1.47e+05 | 1.33e+05 | -1.40e+04 ✓ |"
    assert "they do not (0.000), so no answer metric is marked" in text


def test_sane_answers_mark_real_improvements_only():
    text = render(
        "t",
        overall({**SANE, "exact_match": 0.50001}, {"korean_only_share": 0.9, "exact_match": 0.5}),
        {},
        [],
        [],
        sanity_floor=0.9,
    )
    assert table_row(text, "ROUGE-L F1 (Kiwi)").endswith("+0.010 ✓ |")
    assert table_row(text, "chrF") == "| chrF | 1.0 | 2.2 | +1.2 ✓ |"
    assert table_row(text, "exact match").endswith("+0.000 |")  # lost in rounding: no mark
    assert "✓" not in table_row(text, "length ratio")
    assert delta("length_ratio", 0.4, True) == "+0.40"


def test_empty_answers_are_named_with_their_reason():
    sample = {
        "question": "실사란?",
        "source": "mna",
        "category": "M&A",
        "reference": "조사 절차입니다.",
        "base": "",
        "base_raw": "",
        "adapter": "",
        "adapter_raw": "<think>\n음\n</think>\n\n",
    }
    text = render("t", overall(SANE), {}, [sample], [], sanity_floor=0.9)
    assert "| *(empty answer: stopped at once)* | *(empty answer: only a think block)* |" in text
    whitespace = {**sample, "adapter_raw": "\n\n\n"}
    assert "*(empty answer: only whitespace)*" in render("t", overall(SANE), {}, [whitespace], [])


def test_the_judge_section_and_sample_verdicts():
    judge = {
        "model": "judge-x",
        "rows": 4,
        "identical_rows": 1,
        "win_rate": 0.5,
        "tie_rate": 0.25,
        "loss_rate": 0.25,
        "position_bias": 1 / 3,
        "order_disagreement": 2 / 3,
    }
    rubric = {
        "judge_rubric_accuracy": 3.5,
        "judge_rubric_korean": 4.0,
        "judge_rubric_terminology": 3.0,
        "judge_rubric_completeness": 3.25,
        "judge_rubric_mean": 3.4375,
        "judge_win_rate": 0.5,
    }
    base_rubric = {key: value - 1 for key, value in rubric.items()}
    sample = {
        "question": "q",
        "source": "mna",
        "category": "M&A",
        "reference": "r",
        "base": "b",
        "adapter": "a",
        "judge_verdict": "tie",
        "judge_orders": ["loss", "win"],
        "judge_position_flip": True,
        "judge_reasons": ["A가 낫다", "A가 낫다"],
        "base_rubric": {"accuracy": 2, "korean": 3, "terminology": 1, "completeness": 2, "reason": "부족"},
        "adapter_rubric": {"accuracy": 4, "korean": 5, "terminology": 3, "completeness": 4, "reason": "좋음"},
    }
    text = render("t", overall({**SANE, **rubric}, base_rubric, judge), {}, [sample], [], sanity_floor=0.9)
    assert "## LLM judge" in text and "Judge `judge-x`, 4 rows" in text
    assert "| adapter wins | 0.500 |" in text
    assert "| position-biased: the swap flipped the winner (of 3 rows asked) | 0.333 |" in text
    assert "| accuracy against the reference | 2.50 | 3.50 | +1.00 |" in text
    assert "| mean of the four | 2.44 | 3.44 | +1.00 |" in text
    assert table_row(text, "judge: rubric mean (1–5)").endswith("+1.00 ✓ |")
    assert (
        "judge: a tie — A = base: adapter loss (A가 낫다); A = adapter: adapter win (A가 낫다); position-biased" in text
    )
    assert (
        "rubric, adapter: accuracy against the reference 4, natural Korean 5, terminology 3, completeness 4 — 좋음"
        in text
    )
