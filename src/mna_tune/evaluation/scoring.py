"""Per-row scores and their aggregation: overall, per source and per category, for the
base model and the adapter, with adapter - base deltas. Pure functions, no model."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from ..chat import strip_think
from . import korean_metrics as km

METRICS = (
    "eval_loss",
    "perplexity",
    "rougeL_f1",
    "chrf",
    "exact_match",
    "korean_only_share",
    "empty_answer_share",
    "think_leak_share",
    "length_ratio",
    "domain_term_recall",
    "domain_term_precision",
    "consistency_rougeL",
)


@dataclass(frozen=True)
class ModelRun:
    """What one model produced on the test split."""

    losses: list[tuple[float, int]]  # every test row: (summed answer loss, answer tokens)
    raw: list[str]  # the first len(raw) rows: generated text, think tags kept
    new_tokens: int
    seconds: float
    # per generated row: evaluate.consistency.samples sampled answers (raw), or none
    samples: list[list[str]] = field(default_factory=list)


def empty_reason(raw: str) -> str | None:
    """Why an answer is empty, or None when it is not: the model stopped at once, wrote only
    whitespace, or wrote only a think block (which is stripped from the answer)."""
    if strip_think(raw):
        return None
    if not raw:
        return "stopped at once"
    return "only whitespace" if not raw.strip() else "only a think block"


def row_scores(prediction: str, raw: str, reference: str, term_pattern) -> dict:
    shared, wanted, used = km.domain_term_counts(prediction, reference, term_pattern)
    return {
        "exact_match": km.exact_match(prediction, reference),
        "korean_only": km.is_korean_only(prediction),
        "think_leak": km.think_leak(raw),
        "length_ratio": km.length_ratio(prediction, reference),
        "domain_hits": shared,
        "domain_terms": wanted,
        "domain_used": used,
        "empty": empty_reason(raw),
    }


def score_rows(
    predictions: list[str],
    raw: list[str],
    references: list[str],
    term_pattern,
    samples: list[list[str]] | None = None,
    progress: str | None = None,
) -> list[dict]:
    """Per-row scores; `samples` (raw sampled answers per row) adds the consistency score.
    `progress` names a progress bar (rows done, ETA)."""
    from tqdm.auto import tqdm

    rows = list(zip(predictions, raw, references, strict=True))
    scores = []
    for prediction, text, reference in tqdm(rows, desc=progress, unit="row", disable=progress is None):
        score = row_scores(prediction, text, reference, term_pattern)
        score["rougeL_f1"] = km.rouge_l_f1([prediction], [reference])[0]
        scores.append(score)
    for score, answers in zip(scores, samples or []):
        score["consistency_rougeL"] = km.mean_pairwise_rouge_l([strip_think(answer) for answer in answers])
    return scores


def _ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 6) if denominator else None


def row_details(scores: list[dict]) -> list[dict]:
    """Per-row figures for reports/predictions.jsonl and the MLflow traces, from one model's
    scores ("adapter" or "base" is prefixed by the caller)."""
    return [
        {
            "korean_only": s["korean_only"],
            "exact_match": s["exact_match"],
            "length_ratio": round(s["length_ratio"], 4),
            "domain_term_recall": _ratio(s["domain_hits"], s["domain_terms"]),
            "domain_term_precision": _ratio(s["domain_hits"], s["domain_used"]),
            "consistency_rougeL": None if s.get("consistency_rougeL") is None else round(s["consistency_rougeL"], 6),
            "empty": s["empty"],
        }
        for s in scores
    ]


def add_row_details(predictions: list[dict], scores: dict[str, list[dict]]) -> None:
    """Adds every model's per-row figures to the prediction rows, as `<model>_<figure>`."""
    for name, model_scores in scores.items():
        for prediction, details in zip(predictions, row_details(model_scores), strict=True):
            prediction.update({f"{name}_{key}": value for key, value in details.items()})


def summarise(
    losses: list[tuple[float, int]], scores: list[dict], predictions: list[str], references: list[str]
) -> dict:
    """Metrics for one group: losses of all its rows, text metrics of its generated rows."""
    tokens = sum(count for _, count in losses)
    loss = sum(total for total, _ in losses) / tokens if tokens else float("nan")
    out = {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0)) if tokens else float("nan")}
    if scores:
        n = len(scores)
        wanted, used = sum(s["domain_terms"] for s in scores), sum(s["domain_used"] for s in scores)
        consistency = [s["consistency_rougeL"] for s in scores if s.get("consistency_rougeL") is not None]
        out.update(
            {
                "rougeL_f1": sum(s["rougeL_f1"] for s in scores) / n,
                "chrf": km.chrf(predictions, references),
                "exact_match": sum(s["exact_match"] for s in scores) / n,
                "korean_only_share": sum(s["korean_only"] for s in scores) / n,
                "think_leak_share": sum(s["think_leak"] for s in scores) / n,
                "length_ratio": sum(s["length_ratio"] for s in scores) / n,
                "domain_term_recall": sum(s["domain_hits"] for s in scores) / wanted if wanted else float("nan"),
                # of the lexicon terms the answers use, the share the references use too
                "domain_term_precision": sum(s["domain_hits"] for s in scores) / used if used else float("nan"),
                "empty_answer_share": sum(s["empty"] is not None for s in scores) / n,
                "consistency_rougeL": sum(consistency) / len(consistency) if consistency else float("nan"),
            }
        )
    return {key: round(value, 6) for key, value in out.items() if not math.isnan(value)}


def groups_of(rows: list[dict]) -> dict[str, dict[str, list[int]]]:
    groups: dict[str, dict[str, list[int]]] = {"source": defaultdict(list), "category": defaultdict(list)}
    for index, row in enumerate(rows):
        groups["source"][row["source"]].append(index)
        groups["category"][row["category"]].append(index)
    return {kind: dict(sorted(members.items())) for kind, members in groups.items()}


def summarise_indices(
    indices: list[int], run: ModelRun, scores: list[dict], predictions: list[str], references: list[str]
) -> dict:
    generated = [i for i in indices if i < len(scores)]
    return summarise(
        [run.losses[i] for i in indices],
        [scores[i] for i in generated],
        [predictions[i] for i in generated],
        [references[i] for i in generated],
    )


def deltas(adapter: dict, base: dict) -> dict:
    return {key: round(adapter[key] - base[key], 6) for key in adapter if key in base}


def compare(
    rows: list[dict],
    runs: dict[str, ModelRun],
    scores: dict[str, list[dict]],
    predictions: dict[str, list[str]],
    references: list[str],
) -> tuple[dict, dict]:
    """(overall, by_group): each {"adapter": {...}, "base": {...}, "delta": {...}}."""

    def both(indices: list[int]) -> dict:
        result = {
            name: summarise_indices(indices, runs[name], scores[name], predictions[name], references)
            for name in ("adapter", "base")
        }
        result["delta"] = deltas(result["adapter"], result["base"])
        return result

    overall = both(list(range(len(rows))))
    for name in ("adapter", "base"):
        run = runs[name]
        overall[name]["gen_tokens_per_second"] = round(run.new_tokens / run.seconds, 2) if run.seconds else 0.0
    by_group = {
        kind: {value: both(indices) for value, indices in members.items()} for kind, members in groups_of(rows).items()
    }
    return overall, by_group
