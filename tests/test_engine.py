"""The vLLM engine (`evaluate.engine: vllm`): it answers exactly like the transformers path,
and it fails in one line, leaving no process behind, when it cannot start or dies.

Tests marked `engine` start vLLM from .venv-engine (`make engine`, which `make test` runs);
the others check the failure paths that need no engine."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from helpers import REPO, needs_engine, tiny_params, wait_until
from mna_tune.chat import build_messages
from mna_tune.engine.process import (
    ENGINE_PYTHON_VARIABLE,
    EngineError,
    EngineSpec,
    engine_python,
    lora_rank_for,
    running_engine,
    stop,
)

QUESTIONS = [row["question"] for row in json.loads((REPO / "data/sample/mna_qa.json").read_text(encoding="utf-8"))]


def random_adapter(model, folder, seed: int):
    """A LoRA adapter whose B matrices are random, so it changes the answers."""
    import torch
    from peft import get_peft_model

    from mna_tune.modeling import lora_config

    params = tiny_params()
    peft_model = get_peft_model(model, lora_config(params.lora, params.model))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in peft_model.named_parameters():
            if "lora_B" in name:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.5)
    peft_model.save_pretrained(folder)
    return peft_model


@pytest.fixture(scope="module")
def engine_setup(tmp_path_factory):
    """One engine for the module: tiny-qwen3 as `base`, a random adapter as `adapter`."""
    from mna_tune.engine.models import engine_model
    from mna_tune.modeling import load_base_model, load_tokenizer

    root = tmp_path_factory.mktemp("engine")
    params = tiny_params()
    tokenizer = load_tokenizer(params.model.base)
    model = random_adapter(load_base_model(params.model), root / "adapter", seed=1).eval()
    spec = EngineSpec(
        model=engine_model(params.model, root / "cache"),
        served_name="base",
        dtype="float32",
        max_model_len=2048,
        max_num_seqs=16,
        seed=0,
        loras={"adapter": str(root / "adapter")},
        max_lora_rank=lora_rank_for(params.lora.r),
        runtime_lora=True,
        startup_timeout_s=300,
    )
    with running_engine(spec, REPO, root / "logs") as engine:
        yield engine, model, tokenizer, params, root


@pytest.mark.engine
@needs_engine
def test_greedy_answers_equal_the_transformers_path_for_base_and_adapter(engine_setup):
    from mna_tune.engine.client import EngineAnswers
    from mna_tune.evaluation.answering import TransformersAnswers, VllmAnswers

    engine, model, tokenizer, params, _ = engine_setup
    settings = __import__("mna_tune.decoding", fromlist=["settings_of"]).settings_of(params)
    settings = type(settings)(max_new_tokens=24, batch_size=8)
    conversations = [build_messages(q) for q in QUESTIONS]
    local = TransformersAnswers(model, tokenizer)
    served = VllmAnswers(EngineAnswers(engine, tokenizer), tokenizer, params)
    for which in ("adapter", "base"):
        expected, expected_tokens, _ = local.generate(which, conversations, settings)
        answers, new_tokens, _ = served.generate(which, conversations, settings)
        assert answers == expected, f"{which}: the engine's greedy answers differ from transformers'"
        assert new_tokens == expected_tokens
    assert (
        local.generate("adapter", conversations[:2], settings)[0]
        != local.generate("base", conversations[:2], settings)[0]
    )


@pytest.mark.engine
@needs_engine
def test_a_version_loaded_at_run_time_answers_under_its_name(engine_setup):
    from mna_tune.decoding import GenerationSettings
    from mna_tune.engine.client import EngineAnswers
    from mna_tune.evaluation.answering import TransformersAnswers, VllmAnswers
    from mna_tune.modeling import load_base_model

    engine, _, tokenizer, params, root = engine_setup
    other = random_adapter(load_base_model(params.model), root / "other", seed=2).eval()
    settings = GenerationSettings(max_new_tokens=12, batch_size=4)
    conversations = [build_messages(q) for q in QUESTIONS[:4]]
    served = VllmAnswers(EngineAnswers(engine, tokenizer), tokenizer, params).with_adapter(
        "champion-v2", root / "other", other
    )
    expected = TransformersAnswers(other, tokenizer).generate("adapter", conversations, settings)[0]
    assert served.generate("adapter", conversations, settings)[0] == expected


def test_a_missing_engine_environment_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv(ENGINE_PYTHON_VARIABLE, raising=False)
    missing = r"evaluate.engine is 'vllm' but the engine environment is missing .*make engine"
    with pytest.raises(EngineError, match=missing):
        engine_python(tmp_path)
    monkeypatch.setenv(ENGINE_PYTHON_VARIABLE, str(tmp_path / "nowhere/python"))
    with pytest.raises(EngineError, match=f"{ENGINE_PYTHON_VARIABLE} is missing"):
        engine_python(tmp_path)


def test_a_taken_port_is_one_line_before_anything_starts(tmp_path, monkeypatch):
    monkeypatch.setenv(ENGINE_PYTHON_VARIABLE, sys.executable)  # never started: the port check comes first
    monkeypatch.setattr("mna_tune.engine.process.vllm_version", lambda python: "vllm 0")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        spec = EngineSpec("m", "base", "float32", 256, 1, 0, port=port)
        refused = pytest.raises(EngineError, match=f"cannot serve on 127.0.0.1:{port}: .*choose another --port")
        with refused, running_engine(spec, tmp_path, tmp_path / "logs"):
            pass


def test_an_engine_that_exits_while_starting_is_one_line_naming_its_log(tmp_path, monkeypatch):
    """A python without vLLM stands in for an engine that cannot start."""
    fake = tmp_path / "python"
    fake.write_text(
        "#!/bin/sh\nif [ \"$1\" = -c ]; then echo 'vllm 0'; exit 0; fi\n"
        "echo 'ValueError: Unsupported CPU attention configuration: head_dim=16' >&2; exit 3\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv(ENGINE_PYTHON_VARIABLE, str(fake))
    spec = EngineSpec("m", "base", "float32", 256, 1, 0, startup_timeout_s=30)
    with pytest.raises(EngineError) as failure, running_engine(spec, tmp_path, tmp_path / "logs"):
        pass
    message = str(failure.value)
    assert "exited with code 3 while starting" in message and "head_dim=16" in message
    assert "log: " + str(tmp_path / "logs") in message


STAGE_WITH_ENGINE = """
import sys
from pathlib import Path
from mna_tune.engine.models import engine_model
from mna_tune.engine.process import EngineSpec, running_engine
from helpers import tiny_params
root = Path(sys.argv[1])
spec = EngineSpec(engine_model(tiny_params().model, root / "cache"), "base", "float32", 512, 2, 0,
                  startup_timeout_s=300)
with running_engine(spec, Path(sys.argv[2]), root / "logs") as engine:
    print("PID", engine.process.pid, flush=True)
    import time
    time.sleep(600)
"""


@pytest.mark.engine
@needs_engine
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])  # Ctrl-C takes the same `finally`
def test_no_engine_process_outlives_its_stage(tmp_path, how):
    """SIGTERM, Ctrl-C or kill -9 of the process that started the engine: every engine
    process ends with it (process group stopped; parent-death signal for kill -9)."""
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'tests'}:{REPO / 'src'}"}
    stage = subprocess.Popen(
        [sys.executable, "-c", STAGE_WITH_ENGINE, str(tmp_path), str(REPO)], env=env, stdout=subprocess.PIPE, text=True
    )
    line = stage.stdout.readline()
    assert line.startswith("PID"), "the engine did not start"
    engine = psutil.Process(int(line.split()[1]))
    group = [engine] + engine.children(recursive=True)
    stage.send_signal(how)
    stage.wait(timeout=60)
    gone, alive = psutil.wait_procs(group, timeout=40)
    assert alive == [], f"engine processes left after {how.name}: {[p.pid for p in alive]}"
    time.sleep(0.1)


@pytest.mark.engine
@needs_engine
def test_the_judge_against_a_vllm_server_counts_unreadable_verdicts_as_failures(engine_setup, tmp_path):
    """The LLM judge's endpoint is vLLM's own chat server (tiny-qwen3, JSON-schema structured
    output). A random model fills the schema's grammar with noise until max_tokens: whatever
    it writes, every row ends judged or counted as failed, and judging never stops."""
    from test_judge import make_judge, rows

    from mna_tune.evaluation.judge import summarise

    engine, *_ = engine_setup
    environ = {"MNA_TUNE_JUDGE_BASE_URL": engine.base_url, "MNA_TUNE_JUDGE_MODEL": "base"}
    judge = make_judge(tmp_path, environ, max_tokens=48, timeout_s=120)
    judged = judge.judge_rows(rows(3))
    summary = summarise(judged)["pairwise"]
    assert summary["rows"] + summary["failed_rows"] == 3
    for row in judged:
        assert ("failed" in row and "schema" in row["failed"]) or row["pairwise"]["verdict"] in ("win", "tie", "loss")
    sent = judge.client.requests_sent
    assert sent >= 3 * 2  # asked, retried on unreadable replies, never crashed


@pytest.mark.engine
@needs_engine
def test_an_engine_killed_mid_generation_is_one_line_and_nothing_is_left(engine_setup):
    """kill -9 of the engine while it answers: EngineError naming it; its workers are gone.
    The module's engine is killed, so this runs last in the module."""
    from mna_tune.decoding import GenerationSettings
    from mna_tune.engine.client import EngineAnswers

    engine, _, tokenizer, _, _ = engine_setup
    group = [engine.process.pid] + [child.pid for child in psutil.Process(engine.process.pid).children(True)]
    answers = EngineAnswers(engine, tokenizer, timeout_s=60)
    prompts = [[151644, 872, 198, 62275, 151645, 198, 151644, 77091, 198]] * 64
    killer = subprocess.Popen([sys.executable, "-c", f"import os,time; time.sleep(1.0); os.kill({group[0]}, 9)"])
    with pytest.raises(EngineError, match="the vLLM engine exited with code -9"):
        answers.generate("base", prompts, GenerationSettings(max_new_tokens=1500, batch_size=1))
    killer.wait()
    stop(engine.process)  # what running_engine's `finally` does on the stage's way out
    wait_until(
        lambda: not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in group),
        30,
        "the engine's processes to end",
    )
