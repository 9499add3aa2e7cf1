import pytest

from mna_tune.evaluate import apply_gate
from mna_tune.gate import decide
from mna_tune.params import GateParams, MlflowParams

BASE = {"rougeL_f1": 0.20, "eval_loss": 2.0, "korean_only_share": 0.95}


def test_without_champion_the_candidate_must_beat_the_base_model():
    passed = decide("rougeL_f1", 0.05, 0.9, {"rougeL_f1": 0.26, "korean_only_share": 0.97}, None, BASE)
    assert passed.passed and "improvement +0.060000" in passed.reason and "base model" in passed.reason
    failed = decide("rougeL_f1", 0.05, 0.9, {"rougeL_f1": 0.24, "korean_only_share": 0.97}, None, BASE)
    assert not failed.passed and "improvement +0.040000 < required +0.050000" in failed.reason


def test_champion_is_the_reference_when_there_is_one():
    champion = {"rougeL_f1": 0.30}
    decision = decide("rougeL_f1", 0.0, 0.9, {"rougeL_f1": 0.29, "korean_only_share": 1.0}, champion, BASE, "4")
    assert not decision.passed and "champion v4" in decision.reason


def test_lower_is_better_metrics_and_the_korean_only_floor():
    assert decide("eval_loss", 0.1, 0.0, {"eval_loss": 1.85, "korean_only_share": 1.0}, {"eval_loss": 2.0},
                  BASE).passed
    assert not decide("eval_loss", 0.1, 0.0, {"eval_loss": 1.95, "korean_only_share": 1.0}, {"eval_loss": 2.0},
                      BASE).passed
    low = decide("rougeL_f1", -1.0, 0.9, {"rougeL_f1": 0.9, "korean_only_share": 0.85}, None, BASE)
    assert not low.passed and low.reason == "Korean-only share 0.8500 < required 0.9000"


@pytest.fixture
def tracker(tmp_path, monkeypatch):
    from mna_tune.tracking import Tracker

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    tracker = Tracker(MlflowParams(registered_model="gate-test"))

    def register(rouge: float, korean: float = 1.0) -> str:
        run_id = tracker.start_run("r", {}, {})
        tracker.log_artifacts(run_id, adapter, "adapter")
        tags = {"eval.adapter.rougeL_f1": str(rouge), "eval.adapter.korean_only_share": str(korean)}
        return str(tracker.register_adapter(run_id, adapter, {"base": "tiny-qwen3"}, tags).version)

    tracker.register_for_test = register
    return tracker


def champion(tracker):
    found = tracker.alias_version(tracker.CHAMPION)
    return str(found.version) if found else None


def test_gate_pass_moves_champion_and_fail_leaves_it(tracker):
    gate = GateParams(metric="rougeL_f1", min_delta=0.01, min_korean_only=0.9)
    v1 = tracker.register_for_test(0.30)
    assert apply_gate(tracker, v1, {"rougeL_f1": 0.30, "korean_only_share": 1.0}, BASE, gate).passed
    assert champion(tracker) == v1

    v2 = tracker.register_for_test(0.305)  # +0.005 < 0.01: not good enough
    decision = apply_gate(tracker, v2, {"rougeL_f1": 0.305, "korean_only_share": 1.0}, BASE, gate)
    assert not decision.passed and champion(tracker) == v1
    assert str(tracker.alias_version(tracker.CANDIDATE).version) == v2
    tags = tracker.version(v2).tags
    assert tags["gate.passed"] == "false" and f"champion v{v1}" in tags["gate.reason"]

    v3 = tracker.register_for_test(0.35)
    assert apply_gate(tracker, v3, {"rougeL_f1": 0.35, "korean_only_share": 1.0}, BASE, gate).passed
    assert champion(tracker) == v3 and tracker.version(v3).tags["gate.decided_by"] == "gate"


def test_manual_promote_and_rollback(tracker):
    v1, v2 = tracker.register_for_test(0.3), tracker.register_for_test(0.1)
    with pytest.raises(ValueError, match="no earlier champion"):
        tracker.rollback("nothing yet")
    tracker.promote(v1, "first", "cli")
    assert tracker.promote(v2, "override: legal asked for it", "cli") == v1
    assert champion(tracker) == v2 and tracker.version(v2).tags["gate.reason"] == "override: legal asked for it"
    assert tracker.rollback("v2 regressed") == (v2, v1)
    assert champion(tracker) == v1 and tracker.version(v2).tags["rollback.reason"] == "v2 regressed"
