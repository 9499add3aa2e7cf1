"""The LLM judge against a real HTTP server on 127.0.0.1 that plays an OpenAI-compatible
endpoint: it answers by the JSON schema each request names in `response_format`, with a
policy the test picks (prefer the adapter, always prefer position A, ...)."""

import json

import pytest

from helpers import (
    REPO,
    FakeJudge,
    prefer_adapter,
    repo_params,
    serve_chat,
    with_section,
)
from mna_tune.evaluation import judge as judge_module
from mna_tune.evaluation.judge import (
    CRITERIA,
    Judge,
    JudgeConfigError,
    JudgeError,
    PairwiseVerdict,
    RubricScores,
    adapter_outcome,
    combine,
    summarise,
)
from mna_tune.params import GateParams, ParamsError, load_params
from mna_tune.registry.promotion import decide

SECRET = "sk-judge-7d1e-not-a-real-key"
PAIRWISE_PROMPT = REPO / "prompts/judge_pairwise.txt"
RUBRIC_PROMPT = REPO / "prompts/judge_rubric.txt"


# ---- the fake judge (helpers.FakeJudge) answers by a policy ----


def always_a(kind, fields):
    if kind == "pairwise":
        return {"reason": "첫 번째 답변이 낫습니다.", "winner": "A"}
    return prefer_adapter(kind, fields)


@pytest.fixture
def server(monkeypatch):
    with serve_chat(FakeJudge(), monkeypatch) as state:
        yield state


@pytest.fixture
def environ(server):
    return {
        "MNA_TUNE_JUDGE_BASE_URL": server.url + "/v1/",
        "MNA_TUNE_JUDGE_MODEL": "judge-test",
        "MNA_TUNE_JUDGE_API_KEY": SECRET,
    }


def judge_params(tmp_path, **judge):
    params = repo_params(paths={**load_params(REPO / "params.yaml").paths.model_dump(), "cache": tmp_path / "cache"})
    values = {
        "enabled": True,
        "pairwise_prompt_path": PAIRWISE_PROMPT,
        "rubric_prompt_path": RUBRIC_PROMPT,
        "concurrency": 4,
        **judge,
    }
    evaluate = params.evaluate.model_copy(update={"judge": params.evaluate.judge.model_copy(update=values)})
    return params.model_copy(update={"evaluate": evaluate})


def make_judge(tmp_path, environ, **judge) -> Judge:
    made = Judge.from_params(judge_params(tmp_path, **judge), environ, backoff_s=0.001)
    made.progress = False
    return made


def rows(n: int) -> list[dict]:
    return [
        {
            "id": f"r{i}",
            "question": f"질문 {i}",
            "reference": f"참고 {i}",
            "base": f"기본 답변 {i}",
            "adapter": f"어댑터 답변 {i}",
        }
        for i in range(n)
    ]


# ---- how verdicts combine (pure) ----


@pytest.mark.parametrize(
    "first, second, verdict, flip",
    [
        ("win", "win", "win", False),
        ("loss", "loss", "loss", False),
        ("tie", "tie", "tie", False),
        ("win", "loss", "tie", True),
        ("loss", "win", "tie", True),  # the same position preferred twice
        ("win", "tie", "tie", False),
        ("tie", "loss", "tie", False),  # disagreement, not a flip
    ],
)
def test_two_orders_combine_as_documented(first, second, verdict, flip):
    assert combine(first, second) == (verdict, flip)


def test_the_adapter_outcome_follows_its_position():
    assert adapter_outcome("B", "B") == "win" and adapter_outcome("A", "B") == "loss"
    assert adapter_outcome("A", "A") == "win" and adapter_outcome("tie", "A") == "tie"


def test_replies_are_read_by_their_schema():
    assert PairwiseVerdict.model_validate_json('{"reason": "r", "winner": "A"}').winner == "A"
    for bad in (
        '{"reason": "r", "winner": "C"}',
        '{"winner": "A"}',
        '{"reason": "r", "winner": "A", "x": 1}',
        '```json\n{"reason": "r", "winner": "A"}\n```',
    ):
        with pytest.raises(ValueError):
            PairwiseVerdict.model_validate_json(bad)
    with pytest.raises(ValueError):
        RubricScores.model_validate_json(
            '{"reason": "r", "accuracy": 6, "korean": 1, "terminology": 1, "completeness": 1}'
        )


# ---- against the server ----


def test_a_judge_that_prefers_the_adapter_gives_wins_and_rubric_means(tmp_path, server, environ):
    judged = make_judge(tmp_path, environ).judge_rows(rows(3))
    assert [row["pairwise"]["verdict"] for row in judged] == ["win"] * 3
    assert all(row["pairwise"]["orders"] == ["win", "win"] and not row["pairwise"]["position_flip"] for row in judged)
    summary = summarise(judged)
    assert summary["pairwise"] == {
        "win_rate": 1.0,
        "tie_rate": 0.0,
        "loss_rate": 0.0,
        "rows": 3,
        "identical_rows": 0,
        "failed_rows": 0,
        "position_bias": 0.0,
        "order_disagreement": 0.0,
    }
    assert summary["rubric"]["adapter"] == {
        "accuracy": 4.0,
        "korean": 5.0,
        "terminology": 3.0,
        "completeness": 4.0,
        "mean": 4.0,
    }
    assert summary["rubric"]["base"] == {
        "accuracy": 2.0,
        "korean": 3.0,
        "terminology": 1.0,
        "completeness": 2.0,
        "mean": 2.0,
    }
    assert judged[0]["rubric"]["adapter"]["reason"] == "좋은 답변"
    # two pairwise orders and two rubric questions per row
    assert len(server.requests) == 12


def test_a_judge_that_always_prefers_position_a_is_position_bias_not_a_win(tmp_path, server, environ):
    server.policy = always_a
    judged = make_judge(tmp_path, environ).judge_rows(rows(4))
    pairwise = summarise(judged)["pairwise"]
    assert pairwise["win_rate"] == 0.0 and pairwise["loss_rate"] == 0.0 and pairwise["tie_rate"] == 1.0
    assert pairwise["position_bias"] == 1.0 and pairwise["order_disagreement"] == 1.0
    # first order A = base: the adapter lost; second order A = adapter: it won
    assert all(row["pairwise"]["orders"] == ["loss", "win"] and row["pairwise"]["position_flip"] for row in judged)


def test_rates_over_mixed_rows(tmp_path, server, environ):
    """r0 adapter wins both orders, r1 base wins both, r2 position A twice (a flip), r3 the
    adapter wins once and ties once (a disagreement, not a flip)."""

    def scripted(kind, fields):
        if kind == "rubric":
            return prefer_adapter(kind, fields)
        row = int(fields["question"].split()[-1])
        adapter_is_a = "어댑터" in fields["a"]
        adapter, base = ("A", "B") if adapter_is_a else ("B", "A")
        winner = {0: adapter, 1: base, 2: "A", 3: "tie" if adapter_is_a else adapter}[row]
        return {"reason": f"행 {row}", "winner": winner}

    server.policy = scripted
    judged = make_judge(tmp_path, environ).judge_rows(rows(4))
    assert [row["pairwise"]["verdict"] for row in judged] == ["win", "loss", "tie", "tie"]
    assert [row["pairwise"]["position_flip"] for row in judged] == [False, False, True, False]
    assert judged[3]["pairwise"]["orders"] == ["win", "tie"]
    assert summarise(judged)["pairwise"] == {
        "win_rate": 0.25,
        "tie_rate": 0.5,
        "loss_rate": 0.25,
        "rows": 4,
        "identical_rows": 0,
        "failed_rows": 0,
        "position_bias": 0.25,
        "order_disagreement": 0.5,
    }


def test_identical_and_empty_answers_need_no_request(tmp_path, server, environ):
    same = [{"id": "s", "question": "질문 0", "reference": "참고", "base": " ", "adapter": ""}]
    judged = make_judge(tmp_path, environ).judge_rows(same)
    assert server.requests == []
    assert judged[0]["pairwise"]["verdict"] == "tie" and judged[0]["pairwise"]["identical"]
    assert judged[0]["rubric"]["base"] == {**{c: 1 for c in CRITERIA}, "reason": judge_module._EMPTY_REASON}
    pairwise = summarise(judged)["pairwise"]
    assert pairwise["identical_rows"] == 1 and "position_bias" not in pairwise  # no row asked in both orders


def test_requests_ask_for_structured_output_with_the_key(tmp_path, server, environ):
    make_judge(tmp_path, environ).judge_rows(rows(1))
    kinds = set()
    for request in server.requests:
        assert request["path"] == "/v1/chat/completions"
        assert request["headers"]["authorization"] == f"Bearer {SECRET}"
        body = request["body"]
        assert body["model"] == "judge-test" and body["temperature"] == 0
        fmt = body["response_format"]
        assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
        schema = fmt["json_schema"]["schema"]
        assert schema["additionalProperties"] is False and set(schema["required"]) == set(schema["properties"])
        kinds.add(fmt["json_schema"]["name"])
        assert "질문 0" in body["messages"][-1]["content"] and "참고 0" in body["messages"][-1]["content"]
    assert kinds == {"pairwise_verdict", "rubric_verdict"}


def test_a_second_run_sends_no_request_and_a_new_prompt_asks_again(tmp_path, server, environ):
    first = make_judge(tmp_path, environ).judge_rows(rows(2))
    sent = len(server.requests)
    assert sent == 8
    assert make_judge(tmp_path, environ).judge_rows(rows(2)) == first
    assert len(server.requests) == sent  # all from the sqlite cache
    stored = (tmp_path / "cache" / "judge.sqlite").read_bytes()
    assert SECRET.encode() not in stored
    prompt = tmp_path / "pairwise.txt"
    prompt.write_text(PAIRWISE_PROMPT.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    make_judge(tmp_path, environ, pairwise_prompt_path=prompt).judge_rows(rows(2))
    assert len(server.requests) == sent + 4  # a new prompt version: the pairwise questions again, not the rubric
    other_model = {**environ, "MNA_TUNE_JUDGE_MODEL": "judge-2"}
    make_judge(tmp_path, other_model).judge_rows(rows(2)[:1])
    assert len(server.requests) == sent + 8


def test_server_errors_are_retried(tmp_path, server, environ):
    server.script = [(500, "busy"), (429, "slow down")]
    judged = make_judge(tmp_path, environ, concurrency=1).judge_rows(rows(1))
    assert judged[0]["pairwise"]["verdict"] == "win" and len(server.requests) == 6


def test_a_failing_endpoint_is_one_line_without_the_key(tmp_path, server, environ):
    server.script = [(500, f"internal error, key {SECRET}")] * 40
    with pytest.raises(JudgeError) as failure:
        make_judge(tmp_path, environ, concurrency=1).judge_rows(rows(1))
    message = str(failure.value)
    assert "\n" not in message and SECRET not in message and "***" in message
    assert message.startswith(
        f"LLM judge, test row r0, pairwise (A = base): no usable verdict from {server.url}/v1 after 4 attempts"
    )
    assert "HTTP 500" in message


def test_a_reply_off_the_schema_is_retried_then_the_row_counts_as_failed(tmp_path, server, environ):
    """Unreadable replies (off the schema, or JSON cut off at max_tokens) do not stop the
    stage: the row is failed, named with the schema problem, in no other figure, not cached."""
    server.policy = lambda kind, fields: (
        '{"reason": "?", "winner": "C"}' if kind == "pairwise" else prefer_adapter(kind, fields)
    )
    judge = make_judge(tmp_path, environ, concurrency=1)
    judged = judge.judge_rows(rows(2))
    assert all(
        "does not match the pairwise schema (winner: Input should be 'A', 'B' or 'tie')" in row["failed"]
        for row in judged
    )
    assert summarise(judged) == {"pairwise": {"rows": 0, "failed_rows": 2}, "rubric": {}}
    pairwise = [r for r in server.requests if "pairwise" in json.dumps(r["body"]["response_format"])]
    assert len(pairwise) == 2 * 2 * judge.client.attempts  # each order of each row retried to the end
    server.policy = lambda kind, fields: (
        '{"reason": "절차를 정확히 설명' if kind == "pairwise" else prefer_adapter(kind, fields)
    )  # truncated JSON
    judged = make_judge(tmp_path, environ, concurrency=1).judge_rows(rows(2))
    assert summarise(judged)["pairwise"]["failed_rows"] == 2  # nothing was cached from the first run
    server.policy = prefer_adapter
    assert summarise(make_judge(tmp_path, environ).judge_rows(rows(2)))["pairwise"]["failed_rows"] == 0


def test_a_client_error_is_not_retried_and_gives_a_hint(tmp_path, server, environ):
    server.script = [(401, "unauthorized")]
    with pytest.raises(JudgeError, match=r"answered HTTP 401 \(check MNA_TUNE_JUDGE_API_KEY\)") as failure:
        make_judge(tmp_path, environ, concurrency=1).judge_rows(rows(1))
    prompts = [request["body"]["messages"][-1]["content"] for request in server.requests]
    assert prompts.count(prompts[0]) == 1 and SECRET not in str(failure.value)  # the failed one was not repeated


def test_an_endpoint_without_vllm_extras_is_asked_again_without_them(tmp_path, server, environ):
    server.script = [(400, '{"error": "Unrecognized request argument supplied: chat_template_kwargs"}')]
    make_judge(tmp_path, environ, concurrency=1).judge_rows(rows(1))
    assert "chat_template_kwargs" in server.requests[0]["body"]
    assert all("chat_template_kwargs" not in request["body"] for request in server.requests[1:])


def test_an_unreachable_endpoint_fails_in_one_line(tmp_path, server, environ):
    from helpers import free_port

    dead = {**environ, "MNA_TUNE_JUDGE_BASE_URL": f"http://user:pw@127.0.0.1:{free_port()}/v1"}
    with pytest.raises(JudgeError) as failure:
        make_judge(tmp_path, dead, concurrency=1).judge_rows(rows(1))
    message = str(failure.value)
    assert "ConnectError" in message and "pw" not in message and "\n" not in message


# ---- configuration ----


def test_disabled_judge_is_none_and_needs_no_environment(tmp_path):
    assert Judge.from_params(judge_params(tmp_path, enabled=False), {}) is None


def test_the_environment_picks_one_family(tmp_path, server):
    llm = {
        "MNA_TUNE_LLM_BASE_URL": server.url + "/v1",
        "MNA_TUNE_LLM_MODEL": "scorer-model",
        "MNA_TUNE_LLM_API_KEY": "llm-key",
    }
    fallback = Judge.from_params(judge_params(tmp_path), llm)
    assert (fallback.client.endpoint.model, fallback.client.endpoint.api_key) == ("scorer-model", "llm-key")
    own = Judge.from_params(
        judge_params(tmp_path),
        {**llm, "MNA_TUNE_JUDGE_BASE_URL": "http://127.0.0.1:1/v1", "MNA_TUNE_JUDGE_MODEL": "judge-model"},
    )
    # the scorer's key never goes to the judge's own endpoint
    assert (own.client.endpoint.model, own.client.endpoint.api_key) == ("judge-model", None)
    assert SECRET not in repr(own) and "llm-key" not in repr(fallback)
    with pytest.raises(JudgeConfigError, match="neither MNA_TUNE_JUDGE_BASE_URL nor MNA_TUNE_LLM_BASE_URL"):
        Judge.from_params(judge_params(tmp_path), {})
    with pytest.raises(JudgeConfigError, match="MNA_TUNE_JUDGE_MODEL is not"):
        Judge.from_params(judge_params(tmp_path), {"MNA_TUNE_JUDGE_BASE_URL": "http://127.0.0.1:1/v1"})
    with pytest.raises(JudgeConfigError, match="not a valid URL") as bad:
        Judge.from_params(
            judge_params(tmp_path),
            {"MNA_TUNE_JUDGE_BASE_URL": "http://u:secretpw@[::1/v1", "MNA_TUNE_JUDGE_MODEL": "m"},
        )
    assert "secretpw" not in str(bad.value)


def test_a_prompt_without_its_placeholders_is_refused(tmp_path, environ):
    prompt = tmp_path / "p.txt"
    prompt.write_text("질문: {question}\n답변 A: {answer_a}", encoding="utf-8")
    with pytest.raises(ValueError, match=r"lacks the placeholder\(s\) \{reference\}, \{answer_b\}"):
        Judge.from_params(judge_params(tmp_path, pairwise_prompt_path=prompt), environ)


def test_a_judge_gate_needs_the_judge(tmp_path):
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    raw["evaluate"]["gate"]["metric"] = "judge_win_rate"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ParamsError, match="evaluate.gate.metric is 'judge_win_rate' but evaluate.judge.enabled"):
        load_params(path)
    raw["evaluate"]["judge"]["enabled"] = True
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    assert load_params(path).evaluate.gate.metric == "judge_win_rate"


@pytest.mark.parametrize("metric", ["judge_win_rate", "judge_rubric_mean"])
def test_the_gate_takes_judge_figures_higher_is_better(metric):
    gate = GateParams(metric=metric, min_delta=0.1, min_korean_only=0.0, parity="all")
    base = {metric: 0.2, "korean_only_share": 1.0}
    assert decide(gate, {metric: 0.5, "korean_only_share": 1.0}, None, base).passed
    assert not decide(gate, {metric: 0.25, "korean_only_share": 1.0}, None, base).passed
    assert not decide(gate, {metric: 0.5, "korean_only_share": 1.0}, {metric: 0.45}, base, "3").passed


# ---- the evaluate stage with the judge ----


@pytest.mark.slow
def test_evaluate_with_the_judge_writes_its_figures_and_one_trace_per_row(workspace, server, environ, monkeypatch):
    from helpers import tiny_params
    from mna_tune.evaluation.evaluate import run_evaluate
    from mna_tune.registry.traces import run_traces
    from mna_tune.training.train import run_train

    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(judge_module, "BACKOFF_S", 0.001)
    params = tiny_params()
    # repetition_penalty: the tiny random model writes only newlines otherwise (empty answers need no judge)
    params = with_section(
        params,
        "evaluate",
        repetition_penalty=3.0,
        consistency=params.evaluate.consistency.model_copy(update={"samples": 2}),
        judge=params.evaluate.judge.model_copy(
            update={"enabled": True, "pairwise_prompt_path": PAIRWISE_PROMPT, "rubric_prompt_path": RUBRIC_PROMPT}
        ),
    )
    run_train(params)

    # the endpoint fails: one clear error, and evaluate has written nothing
    server.script = [(503, "down")] * 200
    outputs = [
        workspace / path
        for path in (
            "metrics/eval.json",
            "reports/eval.json",
            "reports/eval.md",
            "reports/predictions.jsonl",
            "plots/eval_scores.csv",
        )
    ]
    with pytest.raises(
        JudgeError, match=r"^LLM judge, test row .*: no usable verdict from http://127\.0\.0\.1:\d+/v1 after 4"
    ):
        run_evaluate(params)
    assert not any(path.exists() for path in outputs)

    # a judge that prefers the longer answer (the same whichever position it is in)
    server.script = []

    def longer(kind, fields):
        if kind == "rubric":
            return {
                "reason": "길이로 채점",
                "accuracy": 1 + len(fields["answer"]) % 5,
                "korean": 2,
                "terminology": 1,
                "completeness": 3,
            }
        a, b = len(fields["a"]), len(fields["b"])
        return {"reason": "더 긴 답변", "winner": "A" if a > b else "B" if b > a else "tie"}

    server.policy = longer
    metrics = run_evaluate(params)
    predictions = [json.loads(line) for line in (workspace / "reports/predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 2
    verdicts = [p["judge_verdict"] for p in predictions]
    for p in predictions:
        expected = (
            "tie" if len(p["adapter"]) == len(p["base"]) else "win" if len(p["adapter"]) > len(p["base"]) else "loss"
        )
        assert p["judge_verdict"] == expected and p["judge_position_flip"] is False
        assert set(p["adapter_rubric"]) == {*CRITERIA, "reason"}
        assert 0 <= p["adapter_consistency_rougeL"] <= 1  # two sampled answers: one pair
    judge = metrics["judge"]
    assert judge["win_rate"] == verdicts.count("win") / 2 and judge["loss_rate"] == verdicts.count("loss") / 2
    assert judge["tie_rate"] == verdicts.count("tie") / 2 and judge["rows"] == 2
    assert metrics["judge_win_rate"] == judge["win_rate"]
    assert metrics["base"]["judge_win_rate"] == judge["loss_rate"]
    assert json.loads((workspace / "metrics/eval.json").read_text()) == metrics
    details = json.loads((workspace / "reports/eval.json").read_text())
    assert details["overall"]["judge"]["model"] == "judge-test"
    for name in ("adapter", "base"):
        rubric = [p[f"{name}_rubric"] for p in predictions]
        assert details["overall"][name]["judge_rubric_accuracy"] == pytest.approx(
            sum(r["accuracy"] for r in rubric) / 2
        )
        assert details["overall"][name]["judge_rubric_mean"] == pytest.approx(
            sum(r[c] for r in rubric for c in CRITERIA) / 8
        )
        assert "consistency_rougeL" in details["overall"][name]
    report = (workspace / "reports/eval.md").read_text()
    assert "## LLM judge" in report and "position-biased" in report
    plot = (workspace / "plots/eval_scores.csv").read_text()
    assert "judge_win_rate," in plot and "judge_rubric_mean," in plot and "consistency_rougeL," in plot

    run_id = json.loads((workspace / "models/train_run.json").read_text())["run_id"]
    traces = run_traces(params.mlflow, run_id)
    assert len(traces) == 2
    questions = {p["question"]: p for p in predictions}
    for trace in traces:
        inputs = json.loads(trace.info.request_preview)
        row = questions[inputs["question"]]
        outputs = json.loads(trace.info.response_preview)
        assert outputs == {"base": row["base"], "adapter": row["adapter"]}
        assessments = {a.name: a for a in trace.info.assessments}
        assert assessments["expected_response"].expectation.value == row["reference"]
        assert assessments["judge_pairwise"].feedback.value == row["judge_verdict"]
        assert assessments["judge_pairwise"].source.source_type == "LLM_JUDGE"
        assert assessments["judge_pairwise"].source.source_id == "judge-test"
        assert "더 긴 답변" in assessments["judge_pairwise"].rationale or row["judge_orders"] is None
        assert assessments["judge_rubric_accuracy/adapter"].feedback.value == row["adapter_rubric"]["accuracy"]
        assert assessments["rougeL_f1/adapter"].feedback.value == pytest.approx(row["adapter_rougeL_f1"])
        assert assessments["rougeL_f1/base"].source.source_type == "CODE"
        assert {"korean_only/base", "empty_answer/adapter", "answer_loss/adapter"} <= set(assessments)

    sent = len(server.requests)  # everything judged is cached now: asking again sends nothing
    again = Judge.from_params(params).judge_rows(
        [{key: p[key] for key in ("id", "question", "reference", "base", "adapter")} for p in predictions]
    )
    assert len(server.requests) == sent and [row["pairwise"]["verdict"] for row in again] == verdicts


@pytest.mark.slow
def test_a_judge_gate_judges_a_champion_evaluated_without_the_judge(workspace, server, environ, monkeypatch):
    """The champion was evaluated with the judge off; a candidate gated on the judge's win
    rate is compared with the champion judged on the same rows, never with the base model."""
    from helpers import tiny_params
    from mna_tune.evaluation.evaluate import run_evaluate
    from mna_tune.registry.promotion import promote
    from mna_tune.registry.registry import Registry
    from mna_tune.training.train import run_train

    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(judge_module, "BACKOFF_S", 0.001)
    params = with_section(tiny_params(), "evaluate", repetition_penalty=3.0)
    run_train(params)
    run_evaluate(params)
    registry = Registry(params.mlflow)
    promote(registry, "1", "accepted by hand for the test", "cli")

    judged = params.evaluate.judge.model_copy(
        update={"enabled": True, "pairwise_prompt_path": PAIRWISE_PROMPT, "rubric_prompt_path": RUBRIC_PROMPT}
    )
    gate = params.evaluate.gate.model_copy(update={"metric": "judge_win_rate", "min_korean_only": 0.0})
    candidate = with_section(
        tiny_params(learning_rate=0.05), "evaluate", repetition_penalty=3.0, judge=judged, gate=gate
    )
    run_train(candidate)
    run_evaluate(candidate)
    reason = registry.version("2").tags["gate.reason"]
    assert "vs" in reason and "for champion v1" in reason and "base model" not in reason, reason
    assert "champion v1 re-evaluated on it" in reason
