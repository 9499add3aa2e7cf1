"""The promotion gate: does a candidate adapter deserve the `champion` alias?"""

from __future__ import annotations

from dataclasses import dataclass

from .eval_scoring import LOWER_IS_BETTER


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str


def improvement(metric: str, candidate: float, reference: float) -> float:
    """How much better the candidate is (positive = better), whatever the metric's direction."""
    return reference - candidate if metric in LOWER_IS_BETTER else candidate - reference


def decide(metric: str, min_delta: float, min_korean_only: float, candidate: dict, champion: dict | None,
           base: dict, champion_version: str | None = None) -> GateDecision:
    """`candidate`, `champion` and `base` map metric names to values. Without a champion
    the candidate must beat the base model on the same test rows by `min_delta`."""
    if metric not in candidate:
        return GateDecision(False, f"candidate has no '{metric}' value")
    korean = candidate.get("korean_only_share", 0.0)
    if korean < min_korean_only:
        return GateDecision(False, f"Korean-only share {korean:.4f} < required {min_korean_only:.4f}")
    if champion is not None and metric in champion:
        reference, against = champion[metric], f"champion v{champion_version}"
    else:
        reference, against = base[metric], "the base model (no champion yet)"
    gain = improvement(metric, candidate[metric], reference)
    verdict = f"{metric} {candidate[metric]:.6f} vs {reference:.6f} for {against}: improvement {gain:+.6f}"
    if gain < min_delta:
        return GateDecision(False, f"{verdict} < required {min_delta:+.6f}")
    return GateDecision(True, f"{verdict} >= required {min_delta:+.6f}; Korean-only share {korean:.4f}")
