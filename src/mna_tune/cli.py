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

    run_merge(p.data.mna_path)


def _split(p: Params) -> None:
    from .data.split import run_split

    run_split(p.split)


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


STAGES = {"extract": _extract, "filter": _filter, "merge": _merge, "split": _split, "train": _train,
          "evaluate": _evaluate}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mna-tune", description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default params.yaml)")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in STAGES:
        commands.add_parser(name, help=f"run the {name} stage")
    args = parser.parse_args(argv)
    try:
        STAGES[args.command](load_params(args.params))
    except ValueError as exc:  # every input problem (InputError, ParamsError, ...) is a ValueError
        if os.environ.get("MNA_TUNE_DEBUG"):
            raise
        print(f"mna-tune {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
