"""The `mna-tune` entry point: one subcommand per pipeline stage (dvc.yaml calls these).

Thin on purpose: parse arguments, load params, call the stage's room, turn known input
problems into a one-line error and exit code 1 (set MNA_TUNE_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .params import Params, load_params


def _extract(p: Params) -> None:
    from .data.extract import run_extract

    run_extract(p.data.aihub_dir, p.extract.on_error)


def _filter(p: Params) -> None:
    from .data.filter import run_filter

    run_filter(p.filter)


def _merge(p: Params) -> None:
    from .data.merge import run_merge

    run_merge(p.data.mna_path, p.merge)


def _split(p: Params) -> None:
    from .data.split import run_split
    from .data_report import write_data_report

    run_split(p.split)
    write_data_report(p.train.max_length)


def _train(p: Params) -> None:
    from .runtime import keep_freed_memory
    from .train import run_train

    keep_freed_memory()
    run_train(p)


def _evaluate(p: Params) -> None:
    from .evaluate import run_evaluate
    from .runtime import keep_freed_memory

    keep_freed_memory()
    run_evaluate(p)


def _promote(p: Params, args: argparse.Namespace) -> None:
    from .tracking import Tracker

    tracker = Tracker(p.mlflow)
    tracker.version(args.version)  # fails clearly for an unknown version
    previous = tracker.promote(args.version, f"manual promotion: {args.reason}", "cli")
    print(f"{p.mlflow.registered_model}: champion -> v{args.version} (was {'v' + previous if previous else 'unset'})")


def _rollback(p: Params, args: argparse.Namespace) -> None:
    from .tracking import Tracker

    current, target = Tracker(p.mlflow).rollback(f"manual rollback: {args.reason}")
    print(f"{p.mlflow.registered_model}: champion v{current} -> v{target}")


def _audit(p: Params, args: argparse.Namespace) -> None:
    from .audit import run_audit
    from .tracking import Tracker

    print(run_audit(Tracker(p.mlflow), args.version, args.data, args.json))


def _export(p: Params, args: argparse.Namespace) -> None:
    from .export import export_merged

    out = export_merged(p, args.merged, args.model)
    print(f"export: merged model, tokenizer and chat template in {out}")


def _ask(p: Params, args: argparse.Namespace) -> None:
    from .export import ask

    print(ask(p, args.question, args.model))


STAGES = {"extract": _extract, "filter": _filter, "merge": _merge, "split": _split, "train": _train,
          "evaluate": _evaluate}


def _serve(p: Params, args: argparse.Namespace) -> None:
    import uvicorn

    from .serving import create_app
    from .tracking import Tracker

    tracker = Tracker(p.mlflow)
    version = tracker.resolve_version(args.model)
    model = tracker.load_pyfunc(version).unwrap_python_model()
    name = f"{p.mlflow.registered_model}/{version.version}"
    print(f"serve: {name} ({args.model}) on http://{args.host}:{args.port}/v1/chat/completions")
    uvicorn.run(create_app(model, name), host=args.host, port=args.port, log_level="warning")


TOOLS = {"promote": _promote, "rollback": _rollback, "audit": _audit, "export": _export, "ask": _ask,
         "serve": _serve}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mna-tune", description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default params.yaml)")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in STAGES:
        commands.add_parser(name, help=f"run the {name} stage")
    promote = commands.add_parser("promote", help="point the champion alias at a registered version")
    promote.add_argument("version")
    promote.add_argument("--reason", default="no reason given")
    rollback = commands.add_parser("rollback", help="move the champion alias back to the previous champion")
    rollback.add_argument("--reason", default="no reason given")
    audit = commands.add_parser("audit", help="which code, params and data made a version (or used a file)")
    audit.add_argument("version", nargs="?", help="a version number or @alias, e.g. 7 or @champion")
    audit.add_argument("--data", help="list the versions trained on exactly this file's or folder's content")
    audit.add_argument("--json", action="store_true", help="machine-readable output")
    export = commands.add_parser("export", help="write a merged model folder that plain transformers loads")
    export.add_argument("--merged", type=Path, required=True, help="output folder")
    export.add_argument("--model", help="registered version or @alias (default: models/adapter)")
    ask = commands.add_parser("ask", help="answer one question with the adapter")
    ask.add_argument("question")
    ask.add_argument("--model", help="registered version or @alias (default: models/adapter)")
    serve = commands.add_parser("serve", help="OpenAI-compatible /v1/chat/completions for a registered version")
    serve.add_argument("--model", default="@champion", help="registered version or @alias (default @champion)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        if args.command == "train":
            from .distributed import launch_command, needs_launch

            if needs_launch(params.train):  # every process reruns this command under accelerate
                import subprocess

                command = launch_command(params.train, list(sys.argv[1:] if argv is None else argv))
                print(f"train: {params.train.num_processes} processes: {' '.join(command)}", flush=True)
                return subprocess.run(command).returncode
        if args.command in STAGES:
            STAGES[args.command](params)
        else:
            TOOLS[args.command](params, args)
    except ValueError as exc:  # every input problem (InputError, ParamsError, ...) is a ValueError
        if os.environ.get("MNA_TUNE_DEBUG"):
            raise
        print(f"mna-tune {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
