"""Registry loading through MLflow pyfunc, and the OpenAI-compatible server on loopback."""

import json
import subprocess
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from helpers import QA, cli_env, free_port, tiny_params, wait_until, write_params
from mna_tune.chat import SYSTEM_PROMPT


@pytest.fixture
def registered(workspace):
    from mna_tune.evaluation.evaluate import run_evaluate
    from mna_tune.training.train import run_train

    params = tiny_params()
    run_train(params)
    run_evaluate(params)
    return params


def test_pyfunc_from_the_registry_answers_questions_and_messages(registered, workspace):
    import mlflow

    from mna_tune.serving.ask import ask

    mlflow.set_tracking_uri(f"sqlite:///{workspace}/mlflow.db")  # as a user would
    model = mlflow.pyfunc.load_model(f"models:/{registered.mlflow.registered_model}@candidate")
    questions = [QA[0][0], QA[1][0]]
    answers = model.predict(pd.DataFrame({"question": questions}))
    assert len(answers) == 2 and all(isinstance(a, str) and "<think>" not in a for a in answers)
    assert answers[0] == ask(registered, QA[0][0])  # the same formatting and decoding as `ask`
    messages = [{"role": "user", "content": QA[0][0]}]
    assert model.predict(pd.DataFrame({"messages": [messages]})) == answers[:1]
    with_system = [{"role": "system", "content": SYSTEM_PROMPT}, *messages]
    assert model.predict(pd.DataFrame({"messages": [with_system]})) == answers[:1]
    # the artifact holds the adapter and a reference to the base, not base weights
    local = Path(mlflow.artifacts.download_artifacts(model.metadata.get_model_info().model_uri))
    assert sum(f.stat().st_size for f in local.rglob("*") if f.is_file()) < 2_000_000
    assert json.loads(next(local.rglob("serving_config.json")).read_text())["base"] == "tiny-qwen3"
    # `ask` refuses a question past the context, as the servers do (it was cut with a library warning)
    with pytest.raises(ValueError, match="more than the model's context of 4096 tokens"):
        ask(registered, "합병 " * 6000)


def _call(url: str, body: dict | None = None, key: str | None = None) -> tuple[int, dict]:
    """(status, JSON body) of a request; error statuses are returned, not raised."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.slow
def test_openai_compatible_server_on_loopback(registered, workspace, tmp_path):
    """`mna-tune serve` end to end: the registered version, the API key from the environment
    (never printed), answers equal to `ask`, errors in OpenAI's shape. Limits, streaming and
    shutdown are tested in test_server.py."""
    write_params(workspace, registered)
    port, key = free_port(), "test-key-0f3a9c"
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            ["mna-tune", "serve", "--model", "@candidate", "--port", str(port)],
            cwd=workspace,
            env=cli_env(workspace, MNA_TUNE_API_KEY=key),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}/v1"
    try:
        status, models = wait_until(
            lambda: _call(f"{base}/models", key=key), 120, "mna-tune serve", alive=lambda: server.poll() is None
        )
        name, version = (model["id"] for model in models["data"])  # the stable name first, then its version
        assert status == 200 and name == f"{registered.mlflow.registered_model}@candidate"
        assert version == f"{registered.mlflow.registered_model}/1"
        status, refused = _call(f"{base}/models")
        assert status == 401 and refused["error"]["code"] == "invalid_api_key"

        question = {"messages": [{"role": "user", "content": QA[0][0]}]}
        status, reply = _call(f"{base}/chat/completions", {"model": name, **question}, key=key)
        assert status == 200 and reply["object"] == "chat.completion" and reply["model"] == version
        message = reply["choices"][0]["message"]
        assert message["role"] == "assistant" and isinstance(message["content"], str)
        assert reply["usage"]["prompt_tokens"] > 10

        from mna_tune.serving.ask import ask

        assert message["content"] == ask(registered, QA[0][0])
        assert _call(f"{base}/chat/completions", question, key=key)[1]["choices"] == reply["choices"]  # model omitted
        status, refused = _call(
            f"{base}/chat/completions", {"messages": [{"role": "assistant", "content": "답"}]}, key=key
        )
        assert status == 400 and refused["error"]["param"] == "messages"
        status, refused = _call(f"{base}/chat/completions", {"model": "x", **question}, key=key)
        assert status == 404 and refused["error"]["code"] == "model_not_found"
    finally:
        server.terminate()
        server.wait(timeout=30)
    printed = log.read_text(encoding="utf-8")
    assert f"serve: {name} ({version}) on http://127.0.0.1:{port}" in printed and key not in printed


@pytest.mark.slow
def test_local_base_folder_is_referenced_not_copied(workspace):
    import mlflow

    from mna_tune.evaluation.evaluate import run_evaluate
    from mna_tune.modeling import load_base_model
    from mna_tune.qwen_tokenizer import build_qwen3_tokenizer
    from mna_tune.training.train import run_train

    base = workspace / "local-base"
    load_base_model(tiny_params().model).save_pretrained(str(base))  # ~40 MB of weights
    build_qwen3_tokenizer().save_pretrained(str(base))
    params = tiny_params()
    params = params.model_copy(update={"model": params.model.model_copy(update={"base": str(base)})})
    run_train(params)
    run_evaluate(params)
    mlflow.set_tracking_uri(f"sqlite:///{workspace}/mlflow.db")
    model = mlflow.pyfunc.load_model(f"models:/{params.mlflow.registered_model}@candidate")
    assert len(model.predict(pd.DataFrame({"question": [QA[0][0]]}))) == 1
    local = Path(mlflow.artifacts.download_artifacts(model.metadata.get_model_info().model_uri))
    assert sum(f.stat().st_size for f in local.rglob("*") if f.is_file()) < 2_000_000  # the base stayed put
    assert json.loads(next(local.rglob("serving_config.json")).read_text())["base"] == str(base)
