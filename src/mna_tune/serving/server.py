"""`mna-tune serve`: an OpenAI-compatible server for a registered version, on 127.0.0.1 by
default. `--engine transformers` (the default) generates in this process; `--engine vllm`
generates on the vLLM engine behind it (serving/engine_server.py). Either way clients reach
the same app (serving/app.py) and the same protocol (serving/protocol.py): the chat, models
and health routes, nothing else.
"""

from __future__ import annotations

import ipaddress
import os
import sys

from ..params import Params
from .app import Limits, Served, create_app

API_KEY_ENV = "MNA_TUNE_API_KEY"


# ---------------------------------------------------------------- running it


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: assume it can be reached from outside


def warn_if_exposed(host: str, limits: Limits) -> None:
    if not is_loopback(host) and not limits.api_key:
        print(
            f"serve: warning: listening on {host} without an API key: anyone who can reach it can use the "
            f"model; set --api-key or {API_KEY_ENV}",
            file=sys.stderr,
            flush=True,
        )


def serve(models, served: Served, limits: Limits, host: str, port: int, banner: str, watch=None) -> None:
    """Run the app under uvicorn until SIGTERM/SIGINT. Running generations are told to stop
    first, so the graceful shutdown never waits for one (each stops after its current token).
    `watch(stopping)`, when given, runs in a thread beside it (the engine server's registry watch)."""
    import threading

    import uvicorn

    app = create_app(models, served, limits)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            app.state.stopping.set()
            super().handle_exit(sig, frame)

    warn_if_exposed(host, limits)
    key_note = " (API key required)" if limits.api_key else ""
    print(f"serve: {banner} on http://{host}:{port}/v1/chat/completions{key_note}", flush=True)
    if watch is not None:
        threading.Thread(target=watch, args=(app.state.stopping,), name="registry-watch", daemon=True).start()
    Server(uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3)).run()


def limits_of(args) -> Limits:
    limits = Limits(
        max_tokens_cap=args.max_tokens_cap,
        request_timeout_s=args.request_timeout,
        max_concurrency=args.max_concurrency,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        max_body_bytes=getattr(args, "max_body_bytes", None) or Limits.max_body_bytes,
    )
    return limits


def main(params: Params, args) -> None:
    from ..engine.process import check_port_free
    from ..registry.registry import Registry

    check_port_free(args.host, args.port)  # first: a busy port is one line before minutes of loading

    if getattr(args, "engine", "transformers") == "vllm":
        from .engine_server import main as serve_on_engine

        serve_on_engine(params, args)
        return

    from .jobs import LocalModel

    limits = limits_of(args)
    registry = Registry(params.mlflow)
    version = registry.version(args.model)
    chat_model = registry.load_pyfunc(version).unwrap_python_model()
    served = served_for(registry.name, args.model, str(version.version), chat_model.settings)
    serve(LocalModel(chat_model), served, limits, args.host, args.port, banner(served))


def served_for(registered_model: str, ref: str, version: str, settings) -> Served:
    """What a server started with `--model ref` answers to: the stable name when `ref` is an
    alias (`<model>@champion`), and the version (`<model>/7`)."""
    name = version_name(registered_model, version)
    aliases = {f"{registered_model}{ref}": name} if ref.startswith("@") else {}
    return Served(aliases, {name: settings})


def version_name(registered_model: str, version: str) -> str:
    return f"{registered_model}/{version}"


def banner(served: Served) -> str:
    """`<model>@champion (<model>/7)`, or the version name alone."""
    names = served.names()
    return f"{names[0]} ({names[1]})" if len(names) > 1 else names[0]
