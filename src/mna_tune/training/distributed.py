"""Multi-process training: `train.num_processes > 1` relaunches the train stage under
`accelerate launch` with the repository's accelerate config. Every process then runs the
same `run_train`; the Trainer shards the batches, and only rank 0 talks to MLflow and
writes the stage's outputs (so one DVC stage still yields one run and one adapter).
"""

from __future__ import annotations

import os
import subprocess
import sys

from ..params import TrainParams


def launched() -> bool:
    """True inside a process that accelerate launch / torchrun started."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def needs_launch(train: TrainParams) -> bool:
    return train.num_processes > 1 and not launched()


def launch_command(train: TrainParams, stage_argv: list[str]) -> list[str]:
    """`accelerate launch` of `python -m mna_tune <stage_argv>` with the configured processes."""
    if not train.accelerate_config.is_file():
        raise ValueError(
            f"train.accelerate_config: {train.accelerate_config} not found "
            "(configs/accelerate holds ddp.yaml, fsdp.yaml and deepspeed_zero3.yaml)"
        )
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(train.accelerate_config),
        "--num_processes",
        str(train.num_processes),
        "--num_machines",
        "1",
        "-m",
        "mna_tune",
        *stage_argv,
    ]


def relaunch_if_needed(train: TrainParams, stage_argv: list[str]) -> None:
    """In the first process of a multi-process train: run the stage under accelerate and
    exit with its status. Returns at once otherwise (one process, or already launched)."""
    if not needs_launch(train):
        return
    command = launch_command(train, stage_argv)
    print(f"train: {train.num_processes} processes: {' '.join(command)}", flush=True)
    raise SystemExit(subprocess.run(command).returncode)
