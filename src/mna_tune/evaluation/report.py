"""The human-readable evaluation report (Markdown) under reports/.

Figures are rounded for people (perplexity to one decimal, or in scientific notation when
it is huge; shares to three decimals). A delta gets a check mark only where an improvement
means something and no garbage answer can earn it: eval loss and perplexity (computed on
the reference answers, not on generated ones), and the answer metrics only when the
adapter's answers pass the sanity floor (a Korean-only share of at least the gate's
`min_korean_only`). Empty answers are shown as such, with the reason.
"""

from __future__ import annotations

import math

from ..params import LOWER_IS_BETTER
from .judge import CRITERIA, CRITERION_LABELS
from .scoring import METRICS, empty_reason

_LABELS = {
    "eval_loss": "eval loss (answer)",
    "perplexity": "perplexity",
    "rougeL_f1": "ROUGE-L F1 (Kiwi)",
    "chrf": "chrF",
    "exact_match": "exact match",
    "korean_only_share": "Korean-only share",
    "empty_answer_share": "empty answers",
    "think_leak_share": "think-tag leaks",
    "length_ratio": "length ratio",
    "domain_term_recall": "domain-term recall",
    "domain_term_precision": "domain-term precision",
    "consistency_rougeL": "consistency (ROUGE-L between samples)",
    "gen_tokens_per_second": "generation tokens/s",
    "judge_win_rate": "judge: pairwise wins (base: the adapter's losses)",
    "judge_rubric_mean": "judge: rubric mean (1–5)",
    **{f"judge_rubric_{c}": f"judge: {label} (1–5)" for c, label in CRITERION_LABELS.items()},
}
_JUDGE_METRICS = ("judge_win_rate", "judge_rubric_mean")
_GROUP_METRICS = ("eval_loss", "rougeL_f1", "chrf", "korean_only_share", "domain_term_recall", "judge_rubric_mean")
# marked whenever they improve: scored on the reference answers, no generated answer earns them
_ALWAYS_MARKED = {"eval_loss", "perplexity"}
# marked only when the adapter's answers pass the sanity floor
_ANSWER_MARKED = {
    "rougeL_f1",
    "chrf",
    "exact_match",
    "korean_only_share",
    "domain_term_recall",
    "domain_term_precision",
    "judge_win_rate",
    "judge_rubric_mean",
    *(f"judge_rubric_{c}" for c in CRITERIA),
}
_DECIMALS = {
    "eval_loss": 3,
    "chrf": 1,
    "length_ratio": 2,
    "gen_tokens_per_second": 1,
    "judge_rubric_mean": 2,
    **{f"judge_rubric_{c}": 2 for c in CRITERIA},
}
_HUGE = 10_000.0  # perplexities from here on are written 1.23e+05


def _cell(text: str, limit: int = 400) -> str:
    text = text if len(text) <= limit else text[:limit] + "…"
    return text.replace("|", "\\|").replace("\n", "<br>")


def _answer_cell(text: str, raw: str | None) -> str:
    if text.strip():
        return _cell(text)
    reason = empty_reason(raw) if raw is not None else None
    return f"*(empty answer: {reason})*" if reason else "*(empty answer)*"


def number(metric: str, value, signed: bool = False) -> str:
    """A figure as a person reads it."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    sign = "+" if signed else ""
    if metric == "perplexity":
        return f"{value:{sign}.2e}" if abs(value) >= _HUGE else f"{value:{sign}.1f}"
    return f"{value:{sign}.{_DECIMALS.get(metric, 3)}f}"


def sane(figures: dict, floor: float | None) -> bool:
    """Whether the adapter's answers pass the sanity floor (Korean-only share ≥ floor)."""
    return floor is not None and figures.get("korean_only_share", 0.0) >= floor


def delta(metric: str, value, answers_sane: bool) -> str:
    """The adapter − base delta, with ✓ only where it is a real improvement (see the module)."""
    if value is None:
        return "–"
    shown = number(metric, value, signed=True)
    if metric in _ALWAYS_MARKED or (answers_sane and metric in _ANSWER_MARKED):
        better = value < 0 if metric in LOWER_IS_BETTER else value > 0
        if better and float(shown) != 0.0:  # an improvement that survives rounding
            return shown + " ✓"
    return shown


def _mark_note(adapter: dict, floor: float | None) -> str:
    if floor is None:
        return "✓: lower eval loss or perplexity (scored on the reference answers)."
    status = (
        f"they do ({number('korean_only_share', adapter.get('korean_only_share'))})"
        if sane(adapter, floor)
        else f"they do not ({number('korean_only_share', adapter.get('korean_only_share'))}), so no answer "
        "metric is marked"
    )
    return (
        f"✓: the adapter is better where that means something: eval loss and perplexity (scored on the "
        f"reference answers) always; the answer metrics only when the adapter's answers pass the sanity floor, "
        f"a Korean-only share ≥ {floor}: {status}."
    )


def _judge_section(overall: dict) -> list[str]:
    judge = overall.get("judge")
    if not judge:
        return []
    asked = judge.get("rows", 0) - judge.get("identical_rows", 0)
    lines = [
        "",
        "## LLM judge",
        "",
        f"Judge `{judge.get('model')}`, {judge.get('rows')} rows. Pairwise: asked twice, with the answers' "
        f"positions swapped; the adapter wins a row only when it wins in both orders, loses only when it loses "
        f"in both; anything else is a tie. {judge.get('identical_rows', 0)} rows had identical answers "
        f"(a tie, not asked).",
        "",
        "| pairwise, adapter vs base | share of rows |",
        "|---|---:|",
        f"| adapter wins | {number('', judge.get('win_rate'))} |",
        f"| tie | {number('', judge.get('tie_rate'))} |",
        f"| adapter loses | {number('', judge.get('loss_rate'))} |",
        f"| position-biased: the swap flipped the winner (of {asked} rows asked) | "
        f"{number('', judge.get('position_bias'))} |",
        f"| the two orders disagree at all (of {asked} rows asked) | {number('', judge.get('order_disagreement'))} |",
        "",
        "| rubric, 1–5 | base | adapter | adapter − base |",
        "|---|---:|---:|---:|",
    ]
    for key in (*(f"judge_rubric_{c}" for c in CRITERIA), "judge_rubric_mean"):
        base, adapter = overall["base"].get(key), overall["adapter"].get(key)
        label = CRITERION_LABELS.get(key.removeprefix("judge_rubric_"), "mean of the four")
        lines.append(
            f"| {label} | {number(key, base)} | {number(key, adapter)} | "
            f"{number(key, overall['delta'].get(key), signed=True)} |"
        )
    return lines


def _sample_judgement(sample: dict) -> list[str]:
    if "judge_verdict" not in sample:
        return []
    verdict = {"win": "the adapter wins", "loss": "the base model wins", "tie": "a tie"}[sample["judge_verdict"]]
    orders = sample.get("judge_orders")
    reasons = sample.get("judge_reasons") or []
    if orders:
        how = (
            f"A = base: adapter {orders[0]} ({_cell(reasons[0], 300)}); A = adapter: adapter {orders[1]} "
            f"({_cell(reasons[1], 300)})"
        )
        if sample.get("judge_position_flip"):
            how += "; position-biased"
    else:
        how = "identical answers, not asked"
    lines = [f"judge: {verdict} — {how}", ""]
    for name in ("base", "adapter"):
        rubric = sample.get(f"{name}_rubric")
        if rubric:
            scores = ", ".join(f"{CRITERION_LABELS[c]} {rubric[c]}" for c in CRITERIA)
            lines += [f"rubric, {name}: {scores} — {_cell(rubric['reason'], 300)}", ""]
    return lines


def render(
    title: str,
    overall: dict,
    by_group: dict,
    samples: list[dict],
    header_lines: list[str],
    sanity_floor: float | None = None,
) -> str:
    """`sanity_floor`: the Korean-only share the adapter's answers need before an answer
    metric's improvement gets a check mark (None: only loss and perplexity are marked)."""
    answers_sane = sane(overall["adapter"], sanity_floor)
    lines = [
        f"# {title}",
        "",
        *header_lines,
        "",
        "## Overall",
        "",
        "| metric | base | adapter | adapter − base |",
        "|---|---:|---:|---:|",
    ]
    for metric in (*METRICS, *_JUDGE_METRICS, "gen_tokens_per_second"):
        base, adapter = overall["base"].get(metric), overall["adapter"].get(metric)
        if base is None and adapter is None:
            continue
        lines.append(
            f"| {_LABELS[metric]} | {number(metric, base)} | {number(metric, adapter)} | "
            f"{delta(metric, overall['delta'].get(metric), answers_sane)} |"
        )
    lines += ["", _mark_note(overall["adapter"], sanity_floor)]
    lines += _judge_section(overall)
    for kind, groups in by_group.items():
        shown = [m for m in _GROUP_METRICS if any(m in result["adapter"] for result in groups.values())]
        lines += [
            "",
            f"## By {kind}",
            "",
            f"| {kind} | " + " | ".join(f"{_LABELS[m]} (adapter, Δ)" for m in shown) + " |",
            "|---|" + "---:|" * len(shown),
        ]
        for value, result in groups.items():
            group_sane = sane(result["adapter"], sanity_floor)
            cells = [
                f"{number(m, result['adapter'].get(m))} ({delta(m, result['delta'].get(m), group_sane)})" for m in shown
            ]
            lines.append(f"| {value} | " + " | ".join(cells) + " |")
    if samples:
        lines += ["", "## Sample answers", ""]
        for index, sample in enumerate(samples, start=1):
            lines += [
                f"### {index}. {_cell(sample['question'], 200)}",
                "",
                f"source `{sample['source']}`, category `{sample['category']}`",
                "",
                "| reference | base | adapter |",
                "|---|---|---|",
                f"| {_cell(sample['reference'])} | {_answer_cell(sample['base'], sample.get('base_raw'))} | "
                f"{_answer_cell(sample['adapter'], sample.get('adapter_raw'))} |",
                "",
                *_sample_judgement(sample),
            ]
    return "\n".join(lines).rstrip() + "\n"
