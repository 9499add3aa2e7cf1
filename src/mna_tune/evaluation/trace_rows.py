"""Prediction rows (reports/predictions.jsonl) as the rows registry/traces.py logs as MLflow
traces: the question as input, both answers as outputs, the reference as the expectation,
and every per-row figure and judge verdict as an assessment named `<figure>/<model>`."""

from __future__ import annotations

from .judge import CRITERIA, CRITERION_LABELS

MODELS = ("base", "adapter")
# (figure in the prediction row after the model prefix, assessment name)
FIGURES = (
    ("rougeL_f1", "rougeL_f1"),
    ("korean_only", "korean_only"),
    ("exact_match", "exact_match"),
    ("domain_term_recall", "domain_term_recall"),
    ("domain_term_precision", "domain_term_precision"),
    ("consistency_rougeL", "consistency_rougeL"),
    ("length_ratio", "length_ratio"),
    ("loss", "answer_loss"),
)


def _judge_assessments(row: dict, judge: str) -> list[dict]:
    if row["judge_verdict"] == "failed":  # the judge's replies could not be read: that, and nothing else
        return [{"name": "judge_pairwise", "value": "failed", "rationale": row.get("judge_failure"), "judge": judge}]
    orders = row.get("judge_orders")
    reasons = row.get("judge_reasons") or []
    rationale: str | None
    if orders:
        rationale = (
            f"A = base, B = adapter: adapter {orders[0]}. {reasons[0]}\n"
            f"A = adapter, B = base: adapter {orders[1]}. {reasons[1]}"
        )
    else:
        rationale = reasons[0] if reasons else None
    out = [
        {"name": "judge_pairwise", "value": row["judge_verdict"], "rationale": rationale, "judge": judge},
        {
            "name": "judge_position_flip",
            "value": bool(row["judge_position_flip"]),
            "judge": judge,
            "rationale": "the judge preferred the same position in both orders" if row["judge_position_flip"] else None,
        },
    ]
    for name in MODELS:
        rubric = row[f"{name}_rubric"]
        out += [
            {
                "name": f"judge_rubric_{c}/{name}",
                "value": rubric[c],
                "judge": judge,
                "rationale": f"{CRITERION_LABELS[c]}: {rubric['reason']}",
            }
            for c in CRITERIA
        ]
        out.append(
            {
                "name": f"judge_rubric_mean/{name}",
                "value": sum(rubric[c] for c in CRITERIA) / len(CRITERIA),
                "judge": judge,
                "rationale": rubric["reason"],
            }
        )
    return out


def trace_rows(predictions: list[dict], judge: str | None = None, version: str | None = None) -> list[dict]:
    """One trace row per prediction row; `judge` names the judge model when the rows carry
    its verdicts; `version` is the registered version the rows evaluated (a tag on each trace)."""
    rows = []
    for row in predictions:
        assessments = []
        for name in MODELS:
            assessments += [{"name": f"{label}/{name}", "value": row.get(f"{name}_{key}")} for key, label in FIGURES]
            empty = row.get(f"{name}_empty")
            assessments.append({"name": f"empty_answer/{name}", "value": empty is not None, "rationale": empty})
        if judge and "judge_verdict" in row:
            assessments += _judge_assessments(row, judge)
        rows.append(
            {
                "id": row["id"],
                "inputs": {"question": row["question"]},
                "outputs": {"base": row["base"], "adapter": row["adapter"]},
                "expectations": {"expected_response": row["reference"]},
                "tags": {
                    "source": row["source"],
                    "category": row["category"],
                    **({"model_version": version} if version else {}),
                },
                "assessments": assessments,
            }
        )
    return rows
