"""`mna-tune serve --engine vllm` beside `mna-tune serve`, on one registry, in one test: the
same names, the same refusals (status and OpenAI error body) for the whole table of bad
requests, no route of vLLM's own reachable, the same greedy answer by default; the engine
answers 429 past --max-concurrency; a promotion the engine cannot load (a LoRA rank above
its maximum) is refused while the old version keeps answering and the version's record says
so; a promotion it can load swaps with no failed request; SIGTERM leaves no engine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from contextlib import ExitStack, contextmanager

import psutil
import pytest

from helpers import (
    BAD_REQUEST_CASES,
    ENGINE_PYTHON,
    QA,
    cli_env,
    free_port,
    needs_engine,
    tiny_params,
    wait_until,
    with_section,
    write_params,
)

pytestmark = [pytest.mark.engine, needs_engine]
PENALTY = 3.0  # the random tiny model answers only newlines without it (the versions' evaluated decoding)
KEY = "engine-key-5e1d"
CLOSED = ["/docs", "/openapi.json", "/metrics", "/version", "/v1/completions", "/v1/load_lora_adapter",
          "/v1/unload_lora_adapter", "/tokenize", "/v1/models/x"]  # fmt: skip


@pytest.fixture
def three_versions(workspace):
    """v1 and v2 (rank 8, different seeds) and v3 (rank 32); v1 the champion."""
    from mna_tune.evaluation.evaluate import run_evaluate
    from mna_tune.registry.promotion import promote
    from mna_tune.registry.registry import Registry
    from mna_tune.training.train import run_train

    params = with_section(tiny_params(learning_rate=0.05), "evaluate", max_new_tokens=8, repetition_penalty=PENALTY)
    for seed, rank in ((1, 8), (2, 8), (3, 32)):
        trained = with_section(with_section(params, "train", seed=seed), "lora", r=rank)
        run_train(trained)
        run_evaluate(trained)
    promote(Registry(params.mlflow), "1", "test: v1 first", "test")
    write_params(workspace, params)
    return params


@contextmanager
def server(workspace, log_path, *extra: str):
    """`mna-tune serve` in its own process group on a free port; yields (base URL, process)."""
    port = free_port()
    env = cli_env(workspace, MNA_TUNE_API_KEY=KEY, MNA_TUNE_ENGINE_PYTHON=str(ENGINE_PYTHON))
    argv = ["mna-tune", "serve", "--port", str(port), "--max-concurrency", "1", "--max-tokens-cap", "256", *extra]
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            argv, cwd=workspace, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield f"http://127.0.0.1:{port}", process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)


def post(base: str, path: str, body: bytes, key: str | None = KEY):
    import httpx

    headers = {"Content-Type": "application/json", **({"Authorization": f"bearer {key}"} if key else {})}
    return httpx.post(base + path, content=body, headers=headers, timeout=120)


def up(base: str) -> bool:
    import httpx

    try:
        return httpx.get(base + "/health", headers={"Authorization": f"Bearer {KEY}"}, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def ask_body(**fields) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": QA[0][0]}], **fields}).encode()


def answer(base: str, **fields) -> str:
    reply = post(base, "/v1/chat/completions", ask_body(**fields))
    assert reply.status_code == 200, reply.text
    return reply.json()["choices"][0]["message"]["content"]


def refusal(response) -> tuple:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return response.status_code, body["error"]["type"], body["error"]["param"], body["error"]["code"]


def test_both_servers_keep_one_contract_and_the_engine_swaps_safely(three_versions, workspace, tmp_path):
    from openai import OpenAI

    from mna_tune.registry.registry import Registry
    from mna_tune.serving.ask import ask

    params, name = three_versions, three_versions.mlflow.registered_model
    expected = {version: ask(params, QA[0][0], version) for version in ("1", "2")}
    assert expected["1"] != expected["2"], "the two versions must answer differently for the swap to show"
    with ExitStack() as stack:
        local, _ = stack.enter_context(server(workspace, tmp_path / "serve.log"))
        engine_log = tmp_path / "serve-vllm.log"
        engine, process = stack.enter_context(
            server(workspace, engine_log, "--engine", "vllm", "--poll-s", "0.5", "--max-model-len", "1024")
        )
        wait_until(lambda: up(local), 180, "serve", alive=lambda: True)
        wait_until(lambda: up(engine), 300, "serve --engine vllm", alive=lambda: process.poll() is None)

        # the same names, the alias first; nothing of vLLM's own, with or without the key
        lists = [OpenAI(base_url=f"{b}/v1", api_key=KEY).models.list().data for b in (local, engine)]
        assert [[m.id for m in data] for data in lists] == [[f"{name}@champion", f"{name}/1"]] * 2
        for path in CLOSED:
            for key in (KEY, None):
                statuses = {
                    refusal(post(b, path, b'{"lora_name": "x", "lora_path": "/"}', key)) for b in (local, engine)
                }
                assert len(statuses) == 1 and next(iter(statuses))[0] == (404 if key else 401), (path, statuses)

        # one table of bad requests: the same status and error on both
        for body, param, label in BAD_REQUEST_CASES:
            seen = [refusal(post(b, "/v1/chat/completions", body)) for b in (local, engine)]
            assert seen[0] == seen[1] and seen[0][0] == 400 and seen[0][2] == param, (label, seen)

        # no model and no temperature: the alias's version, greedy, the same answer everywhere
        assert answer(local) == answer(engine) == answer(engine, model=f"{name}/1") == expected["1"]
        client = OpenAI(base_url=f"{engine}/v1", api_key=KEY, max_retries=0, timeout=60)
        chunks = client.chat.completions.create(
            model=f"{name}@champion", messages=[{"role": "user", "content": QA[0][0]}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip() == expected["1"]

        # back-pressure: one generation at a time (--max-concurrency 1), the rest get 429 at once
        statuses: list[int] = []
        long = ask_body(max_tokens=256, temperature=1.0, seed=1)

        def send_long():
            statuses.append(post(engine, "/v1/chat/completions", long).status_code)

        senders = [threading.Thread(target=send_long) for _ in range(4)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(timeout=120)
        assert 200 in statuses and 429 in statuses, statuses

        # a version the engine cannot load (rank 32 > 8) is refused; v1 keeps answering
        env = cli_env(workspace)
        promote = ["mna-tune", "promote", "--reason", "test"]
        subprocess.run([*promote[:2], "3", *promote[2:]], cwd=workspace, env=env, check=True, capture_output=True)
        wait_until(lambda: "did not swap in v3" in engine_log.read_text(encoding="utf-8"), 60, "the refusal line")
        assert answer(engine) == expected["1"] and process.poll() is None
        records = Registry(params.mlflow).records("3")
        assert any("did not swap in v3" in line and "--max-lora-rank" in line for _, line in records), records

        # a version it can load swaps in while requests keep flowing, none failing
        answers, failures, stop = [], [], threading.Event()

        def keep_asking():
            while not stop.is_set():
                reply = post(engine, "/v1/chat/completions", ask_body())
                if reply.status_code == 429:  # the one slot is the other request's
                    continue
                if reply.status_code != 200:
                    failures.append(reply.text)
                    continue
                answers.append(reply.json()["choices"][0]["message"]["content"])

        asker = threading.Thread(target=keep_asking)
        asker.start()
        try:
            time.sleep(1.0)
            subprocess.run([*promote[:2], "2", *promote[2:]], cwd=workspace, env=env, check=True, capture_output=True)
            wait_until(lambda: answers and answers[-1] == expected["2"], 60, "answers of v2")
        finally:
            stop.set()
            asker.join(timeout=60)
        assert failures == [] and set(answers) <= {expected["1"], expected["2"]}
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
    printed = engine_log.read_text(encoding="utf-8")
    assert f"serve: {name}@champion now answers with {name}/2" in printed and KEY not in printed
    leftovers = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if "vllm.entrypoints" in " ".join(p.info["cmdline"] or [])
        and str(workspace) in " ".join(p.info["cmdline"] or [])
    ]
    assert leftovers == []
