"""The parity certificate (evaluation/parity.py) on a trained tiny adapter: every path that
runs here gives the reference's answers, the version carries the certificate, and a path that
is broken on purpose turns it red and the gate refuses."""

from __future__ import annotations

import json

import pytest

from helpers import ENGINE_PYTHON, needs_engine, tiny_params, with_section
from mna_tune.evaluation import parity

pytestmark = pytest.mark.slow


@pytest.fixture
def no_engine(monkeypatch, tmp_path):
    """The engine paths report "not checked" (tests/test_engine_server.py covers the engine)."""
    monkeypatch.setenv("MNA_TUNE_ENGINE_PYTHON", str(tmp_path / "no-engine" / "python"))


def learned(params):
    """30 steps (the answers then differ from row to row), the probe and the certificate on."""
    trained = with_section(params, "train", max_steps=30, learning_rate=1e-2)
    return with_section(
        trained, "evaluate", probes=16, parity=params.evaluate.parity.model_copy(update={"test_rows": 4})
    )


def test_every_path_that_runs_here_agrees_and_the_version_says_so(workspace, no_engine):
    import mlflow

    from mna_tune.evaluation.evaluate import run_evaluate
    from mna_tune.training.train import run_train

    params = learned(tiny_params())
    run_train(params)
    metrics = run_evaluate(params)
    details = json.loads((workspace / "reports/eval.json").read_text())["parity"]
    assert {path: check["status"] for path, check in details.items()} == {
        "transformers": "reference",
        "vllm": "not checked",
        "export": "agrees",
        "serve": "agrees",
        "serve_vllm": "not checked",
        "pyfunc": "agrees",
    }
    questions = details["export"]["of"]
    assert questions == 8 + 2 and metrics["parity"]["serve"] == 1.0  # the probe's 8 training rows, the 2 test rows
    version = mlflow.MlflowClient(f"sqlite:///{workspace}/mlflow.db").get_model_version(
        params.mlflow.registered_model, "1"
    )
    assert version.tags["parity.pyfunc"] == f"agrees {questions}/{questions}"
    assert version.tags["parity.vllm"].startswith("not checked: no engine environment")
    assert "parity certificate" in (workspace / "reports/eval.md").read_text()
    from mna_tune.registry.audit import run_audit
    from mna_tune.registry.registry import Registry
    from mna_tune.registry.tracking import Tracker

    audit = run_audit(Tracker(params.mlflow), Registry(params.mlflow), "@champion", None, False)
    assert f"parity   export: agrees {questions}/{questions}" in audit and "pyfunc: agrees" in audit


def test_an_export_that_drops_the_system_prompt_turns_the_certificate_red(workspace, no_engine, monkeypatch):
    """The exported folder's chat template loses the system prompt after `mna-tune export`
    wrote it: the export path differs and the gate refuses, naming the path and the question."""
    from mna_tune.evaluation.evaluate import run_evaluate
    from mna_tune.registry.registry import Registry
    from mna_tune.training.train import run_train

    real_run = parity.run

    def export_then_break(argv, what):
        real_run(argv, what)
        if what == "mna-tune export":
            config = argv[argv.index("--merged") + 1] + "/tokenizer_config.json"
            with open(config, encoding="utf-8") as handle:
                data = json.load(handle)
            data["chat_template"] = data["chat_template"].replace("당신은", "")  # the system prompt, broken
            with open(config, "w", encoding="utf-8") as handle:
                json.dump(data, handle, ensure_ascii=False)

    monkeypatch.setattr(parity, "run", export_then_break)
    params = learned(tiny_params())
    run_train(params)
    run_evaluate(params)
    version = Registry(params.mlflow).version("1")
    assert version.tags["parity.export"].startswith("differs ")
    assert version.tags["parity.serve"].startswith("agrees ")
    assert version.tags["gate.passed"] == "false" and version.tags["gate.reason"].startswith("parity: export differs")


def test_the_gate_reads_the_certificate():
    agree = parity.PathCheck("agrees", 3, 3)
    differ = parity.PathCheck(
        "differs", 2, 3, first_difference={"question": "실사란?", "reference": "a", "answer": "b"}
    )
    unchecked = parity.PathCheck("not checked", reason="no engine")
    checks = {"transformers": agree, "export": agree, "serve": differ, "vllm": unchecked}
    assert parity.refusal("all", checks).startswith("parity: serve differs 2/3; first difference at '실사란?'")
    assert parity.refusal(["export"], checks) is None
    assert parity.refusal(["vllm"], checks) == "parity: vllm could not be checked (no engine)"
    assert parity.refusal([], checks) is None


@pytest.mark.engine
@needs_engine
def test_the_engine_paths_agree_too(workspace, monkeypatch):
    """With the engine environment: the vLLM engine with the adapter as a LoRA module, and
    `serve --engine vllm` through the SDK, give the reference's greedy answers."""
    from mna_tune.evaluation.evaluate import run_evaluate
    from mna_tune.registry.registry import Registry
    from mna_tune.training.train import run_train

    monkeypatch.setenv("MNA_TUNE_ENGINE_PYTHON", str(ENGINE_PYTHON))
    params = learned(tiny_params())
    run_train(params)
    run_evaluate(params)
    tags = Registry(params.mlflow).version("1").tags
    assert tags["parity.vllm"] == tags["parity.serve_vllm"] == tags["parity.serve"] == "agrees 10/10", tags
