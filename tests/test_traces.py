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


def test_each_runs_traces_are_its_own_though_the_stage_seeded_random(workspace):
    """OpenTelemetry draws trace ids from Python's `random`: two evaluations seeded alike once
    drew the same ids, and the second version's scores landed on the first one's traces."""
    import random

    params = MlflowParams(tracking_uri="", experiment="traces-test", registered_model="m")
    tracker = Tracker(params)
    runs = {}
    for answer in ("첫 답", "둘째 답"):
        run_id = tracker.start_run("train", {}, {})
        tracker.end_run(run_id)
        random.seed(42)  # what the evaluate stage does before generating
        state = random.getstate()
        log_eval_traces(params, run_id, rows(answer))
        assert random.getstate() == state  # the stage's seeded sequence is left as it was
        runs[run_id] = answer
    ids = {}
    for run_id, answer in runs.items():
        traces = run_traces(params, run_id)
        ids[run_id] = {t.info.trace_id for t in traces}
        assert len(traces) == 2 and all(f'"{answer}"' in t.info.response_preview for t in traces)
        for trace in traces:  # every score on a trace comes from its own run
            assert {a.metadata["mlflow.assessment.sourceRunId"] for a in trace.info.assessments} == {run_id}
    first, second = ids.values()
    assert not first & second
