"""registry/traces.py on a real sqlite store: one trace per row with its assessments, a
re-evaluation replaces the run's traces, the run keeps its status."""

import mlflow

from mna_tune.params import MlflowParams
from mna_tune.registry.traces import log_eval_traces, run_traces
from mna_tune.registry.tracking import Tracker


def rows(answer: str) -> list[dict]:
    return [
        {
            "id": f"r{i}",
            "inputs": {"question": f"질문 {i}"},
            "outputs": {"base": "기본", "adapter": answer},
            "expectations": {"expected_response": "참고"},
            "tags": {"source": "mna", "category": "M&A"},
            "assessments": [
                {"name": "rougeL_f1/adapter", "value": 0.5 + i / 10},
                {"name": "rougeL_f1/base", "value": 0.25},
                {"name": "domain_term_precision/base", "value": None},  # undefined: left out
                {"name": "judge_pairwise", "value": "win", "rationale": "더 정확함", "judge": "j-1"},
            ],
        }
        for i in range(2)
    ]


def test_rows_become_traces_and_a_rerun_replaces_them(workspace):
    params = MlflowParams(tracking_uri="", experiment="traces-test", registered_model="m")
    tracker = Tracker(params)
    run_id = tracker.start_run("train", {}, {})
    tracker.end_run(run_id)
    assert log_eval_traces(params, run_id, rows("첫 답")) == 2
    assert log_eval_traces(params, run_id, rows("둘째 답")) == 2
    traces = run_traces(params, run_id)
    assert len(traces) == 2 and all('"둘째 답"' in t.info.response_preview for t in traces)
    for trace in traces:
        assessments = {a.name: a for a in trace.info.assessments}
        assert "domain_term_precision/base" not in assessments
        assert assessments["rougeL_f1/base"].feedback.value == 0.25
        assert assessments["rougeL_f1/base"].source.source_type == "CODE"
        judged = assessments["judge_pairwise"]
        assert (judged.feedback.value, judged.rationale, judged.source.source_type, judged.source.source_id) == (
            "win",
            "더 정확함",
            "LLM_JUDGE",
            "j-1",
        )
        assert trace.info.tags["category"] == "M&A"
    assert mlflow.MlflowClient(tracker.uri).get_run(run_id).info.status == "FINISHED"
