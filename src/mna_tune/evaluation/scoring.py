"""Per-row scores and their aggregation: overall, per source and per category, for the
base model and the adapter, with adapter - base deltas. Pure functions, no model."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from . import korean_metrics as km

METRICS = ("eval_loss", "perplexity", "rougeL_f1", "chrf", "exact_match", "korean_only_share", "think_leak_share",
           "length_ratio", "domain_term_recall")
LOWER_IS_BETTER = {"eval_loss", "perplexity", "think_leak_share"}


@dataclass(frozen=True)
class ModelRun:
    """What one model produced on the test split."""

    losses: list[tuple[float, int]]  # every test row: (summed answer loss, answer tokens)
    raw: list[str]  # the first len(raw) rows: generated text, think tags kept
    new_tokens: int
    seconds: float


def row_scores(prediction: str, raw: str, reference: str, term_pattern) -> dict:
    hits, wanted = km.domain_term_hits(prediction, reference, term_pattern)
    return {"exact_match": km.exact_match(prediction, reference), "korean_only": km.is_korean_only(prediction),
            "think_leak": km.think_leak(raw), "length_ratio": km.length_ratio(prediction, reference),
            "domain_hits": hits, "domain_terms": wanted}


def score_rows(predictions: list[str], raw: list[str], references: list[str], term_pattern) -> list[dict]:
    rouge = km.rouge_l_f1(predictions, references)
    scores = [row_scores(p, r, ref, term_pattern) for p, r, ref in zip(predictions, raw, references, strict=True)]
    for score, value in zip(scores, rouge):
        score["rougeL_f1"] = value
    return scores


def summarise(losses: list[tuple[float, int]], scores: list[dict], predictions: list[str],
              references: list[str]) -> dict:
    """Metrics for one group: losses of all its rows, text metrics of its generated rows."""
    tokens = sum(count for _, count in losses)
    loss = sum(total for total, _ in losses) / tokens if tokens else float("nan")
    out = {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0)) if tokens else float("nan")}
    if scores:
        n = len(scores)
        wanted = sum(s["domain_terms"] for s in scores)
        out.update({
            "rougeL_f1": sum(s["rougeL_f1"] for s in scores) / n,
            "chrf": km.chrf(predictions, references),
            "exact_match": sum(s["exact_match"] for s in scores) / n,
            "korean_only_share": sum(s["korean_only"] for s in scores) / n,
            "think_leak_share": sum(s["think_leak"] for s in scores) / n,
            "length_ratio": sum(s["length_ratio"] for s in scores) / n,
            "domain_term_recall": sum(s["domain_hits"] for s in scores) / wanted if wanted else float("nan"),
        })
    return {key: round(value, 6) for key, value in out.items() if not math.isnan(value)}


def groups_of(rows: list[dict]) -> dict[str, dict[str, list[int]]]:
    groups: dict[str, dict[str, list[int]]] = {"source": defaultdict(list), "category": defaultdict(list)}
    for index, row in enumerate(rows):
        groups["source"][row["source"]].append(index)
        groups["category"][row["category"]].append(index)
    return {kind: dict(sorted(members.items())) for kind, members in groups.items()}


def summarise_indices(indices: list[int], run: ModelRun, scores: list[dict], predictions: list[str],
                      references: list[str]) -> dict:
    generated = [i for i in indices if i < len(scores)]
    return summarise([run.losses[i] for i in indices], [scores[i] for i in generated],
                     [predictions[i] for i in generated], [references[i] for i in generated])


def deltas(adapter: dict, base: dict) -> dict:
    return {key: round(adapter[key] - base[key], 6) for key in adapter if key in base}


def compare(rows: list[dict], runs: dict[str, ModelRun], scores: dict[str, list[dict]],
            predictions: dict[str, list[str]], references: list[str]) -> tuple[dict, dict]:
    """(overall, by_group): each {"adapter": {...}, "base": {...}, "delta": {...}}."""
    def both(indices: list[int]) -> dict:
        result = {name: summarise_indices(indices, runs[name], scores[name], predictions[name], references)
                  for name in ("adapter", "base")}
        result["delta"] = deltas(result["adapter"], result["base"])
        return result

    overall = both(list(range(len(rows))))
    for name in ("adapter", "base"):
        run = runs[name]
        overall[name]["gen_tokens_per_second"] = round(run.new_tokens / run.seconds, 2) if run.seconds else 0.0
    by_group = {kind: {value: both(indices) for value, indices in members.items()}
                for kind, members in groups_of(rows).items()}
    return overall, by_group
