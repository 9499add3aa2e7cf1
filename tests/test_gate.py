"""The promotion gate's decision, and promotion/rollback on a real (sqlite) registry."""

import pytest

from helpers import repo_params
from mna_tune.params import GateParams
from mna_tune.registry.promotion import apply_gate, decide, promote, record_decision, rollback
from mna_tune.registry.registry import CANDIDATE, CHAMPION

BASE = {"rougeL_f1": 0.20, "eval_loss": 2.0, "korean_only_share": 0.95}


def gate(metric="rougeL_f1", min_delta=0.0, min_korean_only=0.9):
    return GateParams(metric=metric, min_delta=min_delta, min_korean_only=min_korean_only, parity="all")


def test_without_champion_the_candidate_must_beat_the_base_model():
    passed = decide(gate(min_delta=0.05), {"rougeL_f1": 0.26, "korean_only_share": 0.97}, None, BASE)
    assert passed.passed and "improvement +0.060000" in passed.reason and "base model" in passed.reason
    failed = decide(gate(min_delta=0.05), {"rougeL_f1": 0.24, "korean_only_share": 0.97}, None, BASE)
    assert not failed.passed and "improvement +0.040000 < required +0.050000" in failed.reason


def test_champion_is_the_reference_when_there_is_one():
    champion = {"rougeL_f1": 0.30}
    decision = decide(gate(), {"rougeL_f1": 0.29, "korean_only_share": 1.0}, champion, BASE, "4")
    assert not decision.passed and "champion v4" in decision.reason


def test_a_champion_without_the_gate_metric_is_never_replaced_by_the_base_model():
    """A champion whose figures lack the metric (a judge figure from a run without the
    judge) is not quietly swapped for the base model as the reference."""
    decision = decide(gate(), {"rougeL_f1": 0.9, "korean_only_share": 1.0}, {"chrf": 0.3}, BASE, "4")
    assert not decision.passed and decision.reason == "champion v4 has no 'rougeL_f1' value to compare with"


def test_lower_is_better_metrics_and_the_korean_only_floor():
    loss_gate = gate("eval_loss", 0.1, 0.0)
    assert decide(loss_gate, {"eval_loss": 1.85, "korean_only_share": 1.0}, {"eval_loss": 2.0}, BASE).passed
    assert not decide(loss_gate, {"eval_loss": 1.95, "korean_only_share": 1.0}, {"eval_loss": 2.0}, BASE).passed
    low = decide(gate(min_delta=-1.0), {"rougeL_f1": 0.9, "korean_only_share": 0.85}, None, BASE)
    assert not low.passed and low.reason == "Korean-only share 0.8500 < required 0.9000"


@pytest.fixture
def registry(tmp_path, monkeypatch):
    from mna_tune.registry.registry import Registry
    from mna_tune.registry.tracking import Tracker

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    mlflow_params = repo_params(mlflow={"registered_model": "gate-test"}).mlflow
    tracker, registry = Tracker(mlflow_params), Registry(mlflow_params)

    def register(rouge: float, korean: float = 1.0) -> str:
        run_id = tracker.start_run("r", {}, {})
        tags = {"eval.adapter.rougeL_f1": str(rouge), "eval.adapter.korean_only_share": str(korean)}
        return str(registry.register(run_id, adapter, {"base": "tiny-qwen3"}, tags).version)

    registry.register_for_test = register
    return registry


def champion(registry):
    found = registry.alias_version(CHAMPION)
    return str(found.version) if found else None


def test_gate_pass_moves_champion_and_fail_leaves_it(registry):
    rule = gate(min_delta=0.01)
    v1 = registry.register_for_test(0.30)
    assert apply_gate(registry, v1, {"rougeL_f1": 0.30, "korean_only_share": 1.0}, BASE, rule, None, "split a").passed
    assert champion(registry) == v1

    v2 = registry.register_for_test(0.305)  # +0.005 < 0.01 over the champion on the same split
    decision = apply_gate(
        registry, v2, {"rougeL_f1": 0.305, "korean_only_share": 1.0}, BASE, rule, (v1, {"rougeL_f1": 0.30}), "split a"
    )
    assert not decision.passed and champion(registry) == v1
    assert str(registry.alias_version(CANDIDATE).version) == v2
    tags = registry.version(v2).tags
    assert (
        tags["gate.passed"] == "false" and f"champion v{v1}" in tags["gate.reason"] and "split a" in tags["gate.reason"]
    )

    v3 = registry.register_for_test(0.35)
    assert apply_gate(
        registry, v3, {"rougeL_f1": 0.35, "korean_only_share": 1.0}, BASE, rule, (v1, {"rougeL_f1": 0.30}), "split a"
    ).passed
    assert champion(registry) == v3 and registry.version(v3).tags["gate.decision"].startswith("passed by gate at")


def test_manual_promote_and_rollback(registry):
    v1, v2 = registry.register_for_test(0.3), registry.register_for_test(0.1)
    with pytest.raises(ValueError, match="no earlier champion"):
        rollback(registry, "nothing yet")
    promote(registry, v1, "first", "cli")
    registry.set_alias(CANDIDATE, v2)
    record_decision(registry, v2, False, "rougeL_f1 0.1 vs 0.3 for champion v1", "gate")
    assert promote(registry, "@candidate", "법무 검토 승인", "cli") == v1  # @candidate is v2
    tags = registry.version(v2).tags
    # the gate's refusal stays as recorded; the person's promotion stands beside it
    assert champion(registry) == v2 and tags["gate.passed"] == "false" and "champion v1" in tags["gate.reason"]
    assert tags["promotion.manual"].startswith("by ") and tags["promotion.manual"].endswith(": 법무 검토 승인")
    with pytest.raises(ValueError, match="--reason is required"):
        promote(registry, v1, "  ", "cli")
    with pytest.raises(ValueError, match="--reason is required"):
        rollback(registry, " ")
    assert rollback(registry, "v2 regressed") == (v2, v1)
    assert champion(registry) == v1 and registry.version(v2).tags["gate.decision"].endswith("v2 regressed")
    # the record keeps every step, oldest first: the gate's refusal is not lost to the promotion
    record = [line for _, line in registry.records(v2)]
    assert [line.split(": ", 1)[1].split(" ")[0] for line in record] == ["gate", "promoted", "rolled"], record
    assert "refused" in record[0] and "법무 검토 승인" in record[1] and "v2 regressed" in record[2]
    assert [line for _, line in registry.records(v1)][-1].endswith("champion again (rollback from v2): v2 regressed")


def test_unknown_version_is_one_line(registry):
    registry.register_for_test(0.3)
    with pytest.raises(ValueError, match=r"gate-test: no model version '7' .*\(registered: v1\)"):
        promote(registry, "7", "typo", "cli")
    with pytest.raises(ValueError, match=r"no version is champion yet.*mna-tune promote 1.*@candidate"):
        registry.version("@champion")
    with pytest.raises(ValueError, match="no model version '@typo'"):
        registry.version("@typo")
