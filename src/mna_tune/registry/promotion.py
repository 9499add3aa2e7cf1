"""Promotion: which registered version is `champion`. Every new version becomes `candidate`;
the gate moves `champion` to it only when it earns it, and a person can promote or roll back
by hand. Every decision and its reason are recorded on the version and its run."""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..params import LOWER_IS_BETTER, GateParams, Params
from .registry import CANDIDATE, CHAMPION, Registry

HISTORY_TAG = "champion_history"  # on the registered model: versions that held champion, in order


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str


def improvement(metric: str, candidate: float, reference: float) -> float:
    """How much better the candidate is (positive = better), whatever the metric's direction."""
    return reference - candidate if metric in LOWER_IS_BETTER else candidate - reference


def decide(
    gate: GateParams, candidate: dict, champion: dict | None, base: dict, champion_version: str | None = None
) -> GateDecision:
    """`candidate`, `champion` and `base` map metric names to values. Without a champion
    the candidate must beat the base model on the same test rows by `min_delta`."""
    metric = gate.metric
    if metric not in candidate:
        return GateDecision(False, f"candidate has no '{metric}' value")
    korean = candidate.get("korean_only_share", 0.0)
    if korean < gate.min_korean_only:
        return GateDecision(False, f"Korean-only share {korean:.4f} < required {gate.min_korean_only:.4f}")
    if champion is not None and metric not in champion:  # never compared with the base model instead
        return GateDecision(False, f"champion v{champion_version} has no '{metric}' value to compare with")
    if champion is None and metric not in base:  # e.g. a precision of answers the base left empty
        return GateDecision(False, f"the base model has no '{metric}' value to compare with; gate on another metric")
    if champion is not None:
        reference, against = champion[metric], f"champion v{champion_version}"
    else:
        reference, against = base[metric], "the base model (no champion yet)"
    gain = improvement(metric, candidate[metric], reference)
    verdict = f"{metric} {candidate[metric]:.6f} vs {reference:.6f} for {against}: improvement {gain:+.6f}"
    if gain < gate.min_delta:
        return GateDecision(False, f"{verdict} < required {gate.min_delta:+.6f}")
    return GateDecision(True, f"{verdict} >= required {gate.min_delta:+.6f}; Korean-only share {korean:.4f}")


MANUAL_PROMOTION_TAG = "promotion.manual"


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def record_decision(registry: Registry, version: str, passed: bool, reason: str, how: str) -> None:
    """The gate's (or a person's) decision, on the version and on its run: three tags, so
    a version's page stays readable (who and when are in `gate.decision`)."""
    tags = {
        "gate.passed": str(passed).lower(),
        "gate.reason": reason,
        "gate.decision": f"{'passed' if passed else 'refused'} by {how} at {_stamp()}",
    }
    registry.set_version_tags(version, tags)
    registry.append_record(version, f"gate {'passed' if passed else 'refused'} ({how}): {reason}")
    run_id = registry.version(version).run_id
    if run_id:
        for key, value in tags.items():
            registry.client.set_tag(run_id, key, value)


def _history(registry: Registry) -> list[str]:
    return [v for v in registry.model_tag(HISTORY_TAG).split(",") if v]


def _set_champion(registry: Registry, version: str, history: list[str]) -> None:
    registry.set_alias(CHAMPION, version)
    registry.set_model_tag(HISTORY_TAG, ",".join(history))


def promote(registry: Registry, ref: str, reason: str, how: str) -> str | None:
    """Point `champion` at version `ref` (`7` or `@candidate`); returns the version it
    pointed at before. An unknown version fails in one line. The gate's promotion is its
    decision; a person's is recorded beside the gate's decision (who, when, why), never over it."""
    if how != "gate" and not reason.strip():  # before anything moves
        raise ValueError("promote: --reason is required: say why this version overrides the gate")
    version = str(registry.version(ref).version)
    previous = registry.alias_version(CHAMPION)
    history = _history(registry)
    if not history or history[-1] != str(version):
        history.append(str(version))
    _set_champion(registry, str(version), history)
    if how == "gate":
        record_decision(registry, version, True, reason, how)
    else:
        record_manual_promotion(registry, version, reason)
    return str(previous.version) if previous else None


def record_manual_promotion(registry: Registry, version: str, reason: str) -> None:
    import getpass

    value = f"by {getpass.getuser()} at {_stamp()}: {reason.strip()}"
    registry.set_version_tags(version, {MANUAL_PROMOTION_TAG: value})
    registry.append_record(version, f"promoted to champion by hand: {reason.strip()}")
    run_id = registry.version(version).run_id
    if run_id:
        registry.client.set_tag(run_id, MANUAL_PROMOTION_TAG, value)


def rollback(registry: Registry, reason: str) -> tuple[str, str]:
    """Move `champion` back to the version that held it before; returns (from, to)."""
    if not reason.strip():
        raise ValueError("rollback: --reason is required: say why the champion goes back")
    history = _history(registry)
    if len(history) < 2:
        raise ValueError(
            f"{registry.name}: no earlier champion to roll back to (champion history: {', '.join(history) or 'empty'})"
        )
    current, target = history[-1], history[-2]
    _set_champion(registry, target, history[:-1])
    registry.set_version_tags(current, {"gate.decision": f"rolled back to v{target} at {_stamp()}: {reason}"})
    registry.append_record(current, f"rolled back: champion went back to v{target}: {reason}")
    registry.append_record(target, f"champion again (rollback from v{current}): {reason}")
    return current, target


def apply_gate(
    registry: Registry,
    version: str,
    candidate: dict,
    base: dict,
    gate: GateParams,
    champion: tuple[str, dict] | None,
    split_note: str,
    refused_by: str | None = None,
) -> GateDecision:
    """`candidate` goes to the new version; `champion` only if the gate passes. `champion`
    is (version, its metrics on the same test split as the candidate), or None."""
    registry.set_alias(CANDIDATE, version)
    champion_version, champion_metrics = champion if champion else (None, None)
    decision = decide(gate, candidate, champion_metrics, base, champion_version)
    decision = GateDecision(decision.passed, f"{decision.reason} ({split_note})")
    if decision.passed and refused_by:  # the figures pass, the paths do not agree
        decision = GateDecision(False, f"{refused_by} (the figures alone would pass: {decision.reason})")
    if decision.passed:
        promote(registry, version, decision.reason, "gate")
    else:
        record_decision(registry, version, False, decision.reason, "gate")
    return decision


def main_promote(params: Params, args) -> None:
    registry = Registry(params.mlflow)
    previous = promote(registry, args.version, args.reason, "cli")
    was = f"v{previous}" if previous else "unset"
    print(f"{registry.name}: champion -> v{registry.alias_version('champion').version} (was {was})")


def main_rollback(params: Params, args) -> None:
    registry = Registry(params.mlflow)
    current, target = rollback(registry, f"manual rollback: {args.reason}")
    print(f"{registry.name}: champion v{current} -> v{target}")
