"""The `mna-tune` entry point: one subcommand per pipeline stage (dvc.yaml calls these) and
per user tool.

Thin on purpose: parse arguments, load params, import the one module that does the work
and call its `main(params, args)`, and turn known input problems into a one-line error
with exit code 1 (set MNA_TUNE_DEBUG=1 for the traceback). Modules are named as strings
and imported only when their command runs, so a stage loads nothing it does not use and
its code dependencies in dvc.yaml can be checked (tests/test_stage_deps.py).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from .params import load_params
from .workspace import check_stage_inputs, stage_inputs, workspace_held

# command -> "module:function"
STAGES = {
    "extract": "mna_tune.data.extract:main",
    "filter": "mna_tune.data.filter:main",
    "merge": "mna_tune.data.merge:main",
    "split": "mna_tune.data.split:main",
    "train": "mna_tune.training.train:main",
    "evaluate": "mna_tune.evaluation.evaluate:main",
}
TOOLS = {
    "promote": "mna_tune.registry.promotion:main_promote",
    "rollback": "mna_tune.registry.promotion:main_rollback",
    "audit": "mna_tune.registry.audit:main",
    "ask": "mna_tune.serving.ask:main",
    "serve": "mna_tune.serving.server:main",
    "export": "mna_tune.serving.export:main",
}


def parser() -> argparse.ArgumentParser:
    first_paragraph = " ".join(__doc__.split("\n\n")[0].split())  # the whole sentence, not its first line
    root = argparse.ArgumentParser(prog="mna-tune", description=first_paragraph)
    root.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default params.yaml)")
    commands = root.add_subparsers(dest="command", required=True)
    for name in STAGES:
        commands.add_parser(name, help=f"run the {name} stage")
    promote = commands.add_parser("promote", help="point the champion alias at a registered version")
    promote.add_argument("version", help="a version number or @alias, e.g. 7 or @candidate")
    promote.add_argument(
        "--reason", required=True, help="why this version becomes champion (recorded beside the gate's decision)"
    )
    rollback = commands.add_parser("rollback", help="move the champion alias back to the previous champion")
    rollback.add_argument("--reason", default="no reason given")
    audit = commands.add_parser("audit", help="which code, params and data made a version (or used a file)")
    audit.add_argument("version", nargs="?", help="a version number or @alias, e.g. 7 or @champion")
    audit.add_argument("--data", help="list the versions trained on exactly this file's or folder's content")
    audit.add_argument("--json", action="store_true", help="machine-readable output")
    export = commands.add_parser("export", help="write a merged model folder that plain transformers loads")
    export.add_argument("--merged", type=Path, required=True, help="output folder")
    export.add_argument("--model", help="registered version or @alias (default: the workspace adapter)")
    export.add_argument("--force", action="store_true", help="replace a previous export in that folder")
    ask = commands.add_parser("ask", help="answer one question with the adapter")
    ask.add_argument("question")
    ask.add_argument("--model", help="registered version or @alias (default: the workspace adapter)")
    serve = commands.add_parser("serve", help="OpenAI-compatible /v1/chat/completions for a registered version")
    serve.add_argument("--model", default="@champion", help="registered version or @alias (default @champion)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=port_number, default=8000)
    serve.add_argument(
        "--engine",
        choices=["transformers", "vllm"],
        default="transformers",
        help="transformers: this process generates; vllm: vLLM's server (.venv-engine) with the adapter as a "
        "LoRA module, swapped in place when the alias moves",
    )
    serve.add_argument("--max-model-len", type=int, default=4096, help="vllm: prompt + answer tokens per request")
    serve.add_argument(
        "--max-body-bytes",
        type=int,
        default=None,
        help="largest request body; larger ones get 413 unread (default 1 MiB; vllm: 32 bytes per context token)",
    )
    serve.add_argument(
        "--poll-s", type=float, default=5.0, help="vllm: how often the alias is checked for a new version"
    )
    # the defaults are serving.server.Limits' (tests/test_server.py checks they agree)
    serve.add_argument("--max-tokens-cap", type=int, default=2048, help="most tokens one request may ask for")
    serve.add_argument("--request-timeout", type=float, default=120.0, help="seconds one generation may run")
    serve.add_argument("--max-concurrency", type=int, default=1, help="generations at once; more get 429")
    serve.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer <key>' (better: set MNA_TUNE_API_KEY, which `ps` does not show)",
    )
    return root


def port_number(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1-65535)")
    return int(text)


def command_function(command: str):
    module, function = {**STAGES, **TOOLS}[command].split(":")
    return getattr(importlib.import_module(module), function)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # a multi-process train relaunches itself
    try:
        params = load_params(args.params)
        if args.command in STAGES:  # the lock DVC writes after a stage must describe what it used
            with workspace_held(args.command):  # no second `dvc exp run` may rewrite params.yaml meanwhile
                before = stage_inputs(args.command, args.params)
                args.check_inputs = lambda: check_stage_inputs(args.command, before, args.params)
                command_function(args.command)(params, args)
                args.check_inputs()
        else:
            command_function(args.command)(params, args)
    except ValueError as exc:  # every input problem (InputError, ParamsError, ...) is a ValueError
        if os.environ.get("MNA_TUNE_DEBUG"):
            raise
        print(f"mna-tune {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except FileNotFoundError as exc:  # an input a stage or tool needs is missing
        if os.environ.get("MNA_TUNE_DEBUG"):
            raise
        hint = (
            f"run the stages before it first (dvc repro {args.command})"
            if args.command in STAGES
            else "run the pipeline first (dvc repro)"
        )
        print(f"mna-tune {args.command}: error: {exc.filename}: not found; {hint}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
