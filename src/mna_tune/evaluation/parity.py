"""The parity certificate: the same questions (the memorisation probe's training questions
and the first `evaluate.parity.test_rows` test questions), greedy, the same max tokens,
replayed through every way a registered version is used, each compared with the reference:

- `transformers`: transformers + PEFT as evaluate runs it (the reference);
- `vllm`: the vLLM engine with the adapter as a LoRA module;
- `export`: `mna-tune export --merged`, loaded by plain transformers with the exported chat
  template (as someone who never saw this project would load it);
- `serve`: `mna-tune serve --model N`, asked through the `openai` SDK;
- `serve_vllm`: `mna-tune serve --engine vllm --model N`, through the SDK;
- `pyfunc`: `models:/<registered model>/N` loaded by MLflow's pyfunc loader.

The commands run as the user runs them (child processes of this one, each stopped with its
process group), so what is certified is what ships. A path that cannot run here (no engine
environment) is "not checked" with the reason, never passed. Answers are compared as text,
think block removed and outer whitespace stripped: float32 on a CPU gives the same tokens on
every path; bf16 on a GPU may differ in the last digits (docs/evaluation.md says how that is
judged).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..chat import build_messages, question_of, strip_think
from ..decoding import settings_of
from ..params import Params
from ..workspace import project_root, read_jsonl

PATHS = ("transformers", "vllm", "export", "serve", "serve_vllm", "pyfunc")
REFERENCE = "transformers"
START_TIMEOUT_S = 600.0


@dataclass
class PathCheck:
    status: str  # agrees | differs | not checked
    equal: int = 0
    of: int = 0
    reason: str | None = None  # why not checked
    first_difference: dict | None = None  # question, reference answer, this path's answer

    def line(self) -> str:
        """One line for a version tag, the report and `audit`."""
        if self.status == "not checked":
            return f"not checked: {self.reason}"
        line = f"{self.status} {self.equal}/{self.of}"
        if self.first_difference:
            diff = self.first_difference
            line += f"; first difference at {diff['question'][:60]!r}: {diff['answer'][:80]!r}"
        return line


def questions_of(params: Params, probe_rows: list[dict]) -> list[str]:
    tests = list(read_jsonl(params.paths.split.test))[: params.evaluate.parity.test_rows]
    return [question_of(row["messages"]) for row in [*probe_rows, *tests]]


def clean(text: str) -> str:
    return strip_think(text).strip()


def compare(questions: list[str], reference: list[str], answers: list[str]) -> PathCheck:
    equal = [clean(a) == clean(r) for a, r in zip(answers, reference)]
    first = next((i for i, same in enumerate(equal) if not same), None)
    return PathCheck(
        "agrees" if all(equal) else "differs",
        sum(equal),
        len(questions),
        first_difference=None
        if first is None
        else {"question": questions[first], "reference": clean(reference[first]), "answer": clean(answers[first])},
    )


# ---------------------------------------------------------------- paths in this process


def in_process(params: Params, answers, model, tokenizer, questions: list[str]) -> dict[str, list[str] | str]:
    """The reference answers, and the engine's (or why it cannot run), from what evaluate has
    loaded: `answers` is evaluate's answer source, whichever engine it is."""
    from .answering import ADAPTER, TransformersAnswers, answering

    settings = replace(settings_of(params), do_sample=False)
    conversations = [build_messages(q) for q in questions]
    reference = TransformersAnswers(model, tokenizer)
    found: dict[str, list[str] | str] = {
        REFERENCE: reference.generate(ADAPTER, conversations, settings, progress="parity: transformers")[0]
    }
    if answers.engine == "vllm":
        found["vllm"] = answers.generate(ADAPTER, conversations, settings, progress="parity: vllm")[0]
        return found
    missing = engine_missing()
    if missing:
        found["vllm"] = missing
        return found
    on_engine = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"engine": "vllm"})})
    with answering(on_engine, model, tokenizer) as engine:
        found["vllm"] = engine.generate(ADAPTER, conversations, settings, progress="parity: vllm")[0]
    return found


def engine_missing() -> str | None:
    from ..engine.process import EngineError, engine_python

    try:
        engine_python(project_root())
    except EngineError:
        return "no engine environment here (`make engine` builds .venv-engine; none on macOS)"
    return None


# ---------------------------------------------------------------- paths a user runs


def command(params_file: Path, *args: str) -> list[str]:
    """`mna-tune` as the user runs it, with the very params this evaluation has."""
    return [sys.executable, "-m", "mna_tune", "--params", str(params_file), *args]


def write_params(params: Params, scratch: Path) -> Path:
    import yaml

    path = scratch / "params.yaml"
    path.write_text(yaml.safe_dump(params.model_dump(mode="json"), allow_unicode=True), encoding="utf-8")
    return path


def exported(params: Params, version: str, questions: list[str], scratch: Path) -> list[str]:
    """`mna-tune export --merged`, then plain transformers on the folder, chat template and all."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = scratch / "merged"
    run(command(scratch / "params.yaml", "export", "--merged", str(folder), "--model", version), "mna-tune export")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    settings = settings_of(params)
    found: list[str] = []
    for question in questions:
        ids: Any = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}],
            add_generation_prompt=True,
            enable_thinking=False,
            return_tensors="pt",
            return_dict=True,
        )
        with torch.no_grad():
            output = model.generate(
                **ids,
                max_new_tokens=settings.max_new_tokens,
                do_sample=False,
                repetition_penalty=settings.repetition_penalty,
                temperature=None,
                top_k=None,
                top_p=None,
            )
        found.append(str(tokenizer.decode(output[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)))
    return found


def served(params: Params, name: str, questions: list[str], engine: str, scratch: Path) -> list[str]:
    """`mna-tune serve` (or `--engine vllm`) on a free loopback port, asked through the SDK."""
    from openai import OpenAI

    from ..engine.process import free_port, stop  # the engine's own: a free port, the process group stopped

    port = free_port("127.0.0.1")
    log = scratch / f"serve-{engine}.log"
    argv = command(scratch / "params.yaml", "serve", "--model", name.rpartition("/")[2], "--port", str(port))
    argv += ["--engine", engine]
    if engine == "vllm":
        argv += ["--max-model-len", str(params.evaluate.vllm.max_model_len)]
    env = {k: v for k, v in os.environ.items() if k != "MNA_TUNE_API_KEY"}
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="parity", max_retries=0, timeout=600)
        wait_listening(port, process, log)
        return [
            client.chat.completions.create(model=name, messages=[{"role": "user", "content": q}])
            .choices[0]
            .message.content
            or ""
            for q in questions
        ]
    finally:
        stop(process)


def pyfunc(registry, version, questions: list[str]) -> list[str]:
    return list(registry.load_pyfunc(version).predict(questions))


def certify(params: Params, registry, version, questions: list[str], replayed: dict) -> dict[str, PathCheck]:
    """Every path's answers compared with the reference; paths run one after another."""
    reference = replayed[REFERENCE]
    name = f"{registry.name}/{version.version}"
    checks: dict[str, PathCheck] = {REFERENCE: compare(questions, reference, reference)}
    checks[REFERENCE].status = "reference"
    engine = replayed["vllm"]
    checks["vllm"] = (
        PathCheck("not checked", reason=engine) if isinstance(engine, str) else compare(questions, reference, engine)
    )
    with tempfile.TemporaryDirectory(prefix="parity-", dir=scratch_root(params)) as scratch:
        write_params(params, Path(scratch))
        runs = {
            "export": lambda: exported(params, str(version.version), questions, Path(scratch)),
            "serve": lambda: served(params, name, questions, "transformers", Path(scratch)),
            "serve_vllm": lambda: served(params, name, questions, "vllm", Path(scratch)),
            "pyfunc": lambda: pyfunc(registry, version, questions),
        }
        for path, answer in runs.items():
            if path == "serve_vllm" and isinstance(engine, str):
                checks[path] = PathCheck("not checked", reason=engine)
                continue
            started = time.monotonic()
            try:
                checks[path] = compare(questions, reference, answer())
            except Exception as failed:  # noqa: BLE001 - a path that fails does not agree; the reason is kept
                checks[path] = PathCheck("differs", 0, len(questions), first_difference=failure(questions, failed))
            print(f"parity: {path}: {checks[path].line()} ({time.monotonic() - started:.0f} s)", flush=True)
    return checks


def failure(questions: list[str], error: Exception) -> dict:
    return {"question": questions[0], "reference": "", "answer": f"(the path failed: {error})"[:300]}


def refusal(required, checks: dict[str, PathCheck]) -> str | None:
    """Why the gate must refuse, or None: a required path that differs, or that was named
    explicitly and could not be checked."""
    named = list(PATHS) if required == "all" else list(required)
    for path in named:
        check = checks.get(path)
        if check is None or check.status == "not checked":
            if required != "all":
                return f"parity: {path} could not be checked ({check.reason if check else 'unknown path'})"
            continue
        if check.status == "differs":
            return f"parity: {path} {check.line()}"
    return None


def as_dict(checks: dict[str, PathCheck]) -> dict:
    return {path: asdict(check) for path, check in checks.items()}


# ---------------------------------------------------------------- processes


class PathFailed(RuntimeError):
    """A path's command failed or its server did not come up: the path does not agree."""


def scratch_root(params: Params) -> Path | None:
    cache = project_root() / params.paths.cache
    cache.mkdir(parents=True, exist_ok=True)
    return cache


def run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=START_TIMEOUT_S)
    if done.returncode != 0:
        raise PathFailed(f"{what} exited {done.returncode}: {(done.stderr or done.stdout).strip()[-300:]}")


def wait_listening(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
            raise PathFailed(f"the server exited with {process.returncode}: {' '.join(tail)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.5)
    raise PathFailed(f"the server did not listen within {START_TIMEOUT_S:.0f} s")
