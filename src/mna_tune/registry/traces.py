"""Evaluation rows as MLflow GenAI traces with assessments, so a reviewer reads the test
answers one by one in the MLflow UI (the run's Traces tab): the question, the reference,
the base and adapter answers, and beside them every per-row score and the LLM judge's
verdicts with their reasons.

`mlflow.genai.evaluate` does the logging: one trace per row, in the given run, with one
code scorer per figure family. The scorers hand over the figures the evaluation already
computed for reports/predictions.jsonl (so the UI and the files never disagree); judge
verdicts are logged with an LLM_JUDGE source naming the judge model. Works offline on the
sqlite store; no usage telemetry is sent.
"""

from __future__ import annotations

import os
import random
from collections import defaultdict
from typing import Any

from ..params import MlflowParams
from .tracking import connect, tracking_uri

CODE_SOURCE = "mna-tune evaluate"
ROW_ID = "row_id"  # the key in each trace's inputs that names its test row


def _feedback(assessment: dict):
    from mlflow.entities import AssessmentSource, AssessmentSourceType, Feedback

    judge = assessment.get("judge")
    source = (
        AssessmentSource(source_type=AssessmentSourceType.LLM_JUDGE, source_id=judge)
        if judge
        else AssessmentSource(source_type=AssessmentSourceType.CODE, source_id=CODE_SOURCE)
    )
    return Feedback(
        name=assessment["name"], value=assessment["value"], rationale=assessment.get("rationale"), source=source
    )


def _scorers(rows: list[dict]) -> list:
    """One code scorer per family (the part of an assessment name before '/'), returning
    that family's assessments of the row named by the trace's inputs."""
    from mlflow.genai.scorers import scorer

    by_row: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        for assessment in row["assessments"]:
            if assessment["value"] is not None:
                by_row[row["id"]][assessment["name"].split("/")[0]].append(assessment)
    families = sorted({family for assessments in by_row.values() for family in assessments})

    def make(family: str):
        def lookup(inputs: dict[str, Any]):
            found = by_row.get(inputs[ROW_ID], {}).get(family, [])
            return [_feedback(assessment) for assessment in found] or None

        return scorer(lookup, name=family)

    return [make(family) for family in families]


def _run_traces(client, experiment_id: str, run_id: str) -> list[str]:
    ids, token = [], None
    while True:
        page = client.search_traces(
            locations=[experiment_id], run_id=run_id, max_results=500, page_token=token, include_spans=False
        )
        ids += [trace.info.trace_id for trace in page]
        token = page.token
        if not token:
            return ids


def log_eval_traces(params: MlflowParams, run_id: str, rows: list[dict], model_id: str | None = None) -> int:
    """Logs `rows` as traces of run `run_id` (linked to the LoggedModel `model_id`, the
    registered version's model), replacing the traces an earlier evaluation left in that run,
    so the run holds one trace per evaluated row and no other run's. Each row:
    {"id", "inputs": {...}, "outputs": {...}, "expectations": {...}, "tags": {...},
    "assessments": [{"name": "family/part", "value", "rationale"?, "judge"?: judge model}]}.
    Returns the number of traces logged. The run keeps its status."""
    if not rows:
        return 0
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # offline: no usage events
    # A sqlite store takes one writer at a time: MLflow's default 10 evaluation threads
    # exhaust its connection pool and traces are dropped after 30 s waits.
    if tracking_uri(params).startswith("sqlite:"):
        os.environ.setdefault("MLFLOW_GENAI_EVAL_MAX_WORKERS", "1")
    mlflow, client, _ = connect(params)
    run = client.get_run(run_id)
    experiment_id = run.info.experiment_id
    earlier = _run_traces(client, experiment_id, run_id)
    data = [
        {
            "inputs": {**row["inputs"], ROW_ID: row["id"]},
            "outputs": row["outputs"],
            "expectations": row["expectations"],
            "tags": {key: str(value) for key, value in row["tags"].items()},
        }
        for row in rows
    ]
    status = run.info.status
    # OpenTelemetry draws trace ids from Python's `random`, which the evaluate stage seeded:
    # every evaluation drew the same ids, and the store merged a new version's traces into the
    # last one's. Fresh entropy for the ids; the seeded state is given back afterwards.
    seeded = random.getstate()
    random.seed()
    try:
        with mlflow.start_run(run_id=run_id):
            mlflow.genai.evaluate(data=data, scorers=_scorers(rows), model_id=model_id)
    finally:
        random.setstate(seeded)
        if status != "RUNNING":  # logging traces does not change how training ended
            client.set_terminated(run_id, status=status)
    for start in range(0, len(earlier), 100):
        client.delete_traces(experiment_id, trace_ids=earlier[start : start + 100])
    return len(rows)


def run_traces(params: MlflowParams, run_id: str) -> list:
    """The run's traces with their assessments (for tests and tools)."""
    _, client, _ = connect(params)
    experiment_id = client.get_run(run_id).info.experiment_id
    return list(client.search_traces(locations=[experiment_id], run_id=run_id, max_results=5000))
