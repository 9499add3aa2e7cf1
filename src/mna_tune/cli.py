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
import math
import os
import sys
import warnings
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
    rollback.add_argument("--reason", required=True, help="why the champion goes back (recorded on the version)")
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
        help="transformers: this process generates; vllm: the vLLM engine (.venv-engine) generates behind the "
        "same server, with the adapter as a LoRA module swapped in when the alias moves",
    )
    serve.add_argument(
        "--max-model-len", type=positive_int, default=4096, help="vllm: prompt + answer tokens per request"
    )
    serve.add_argument(
        "--max-lora-rank",
        type=positive_int,
        default=None,
        help="vllm: the largest LoRA rank a promoted version may have, one of vLLM's (8, 16, 32, 64, ...; "
        "default: the served version's, rounded up)",
    )
    serve.add_argument(
        "--max-body-bytes",
        type=positive_int,
        default=None,
        help="largest request body; larger ones get 413 unread (default 1 MiB)",
    )
    serve.add_argument(
        "--poll-s", type=positive_float, default=5.0, help="vllm: how often the alias is checked for a new version"
    )
    # the defaults are serving.app.Limits' (tests/test_server.py checks they agree)
    serve.add_argument("--max-tokens-cap", type=positive_int, default=2048, help="most tokens one request may ask for")
    serve.add_argument("--request-timeout", type=positive_float, default=120.0, help="seconds one generation may run")
    serve.add_argument("--max-concurrency", type=positive_int, default=1, help="generations at once; more get 429")
    serve.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer <key>' on every route (better: set MNA_TUNE_API_KEY, which `ps` "
        "does not show)",
    )
    return root


def positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def port_number(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1-65535)")
    return int(text)


def quiet_library_warnings() -> None:
    """Warnings from libraries that a user of this project cannot act on, filtered by their
    exact text (anything else still shows):
    - transformers 5.x renamed `gradient_checkpointing` to `activation_checkpointing`; TRL's
      SFTConfig still sets and reads the old name (train.gradient_checkpointing is ours);
    - MLflow asks for type hints on `predict`: the pyfunc model takes a DataFrame, a list of
      questions or chat messages on purpose, which one type hint would refuse."""
    warnings.filterwarnings("ignore", r"`(is_)?gradient_checkpointing` is deprecated", FutureWarning)
    warnings.filterwarnings("ignore", r".*Add type hints to the `predict` method", UserWarning)


def command_function(command: str):
    module, function = {**STAGES, **TOOLS}[command].split(":")
    return getattr(importlib.import_module(module), function)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    quiet_library_warnings()
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
