"""train.num_processes: 2 relaunches the train stage under `accelerate launch` with the
repository's DDP config; on this CPU machine the two processes join over gloo and run the
same run_train as a single-process stage. Rank 0 alone logs to MLflow and writes outputs."""

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers import REPO, cli_env, tiny_params, write_params, write_splits


@pytest.mark.slow
def test_two_cpu_processes_train_one_adapter(tmp_path):
    import mlflow
    from peft import PeftModel

    from mna_tune.modeling import load_base_model

    write_splits(tmp_path)
    params = tiny_params(max_steps=2, num_processes=2, accelerate_config=REPO / "configs/accelerate/ddp.yaml")
    write_params(tmp_path, params)
    done = subprocess.run(
        ["mna-tune", "train"], cwd=tmp_path, env=cli_env(tmp_path), capture_output=True, text=True, timeout=600
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "train: 2 processes" in log

    metrics = json.loads((tmp_path / "metrics/train.json").read_text())
    assert metrics["steps"] == 2
    PeftModel.from_pretrained(load_base_model(tiny_params().model), str(tmp_path / "models/adapter"))

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name(params.mlflow.experiment)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1  # rank 1 trained but logged nothing
    assert runs[0].data.metrics["processes"] == 2 and runs[0].info.status == "FINISHED"
    assert runs[0].data.metrics["train_loss"] > 0
    assert not list(tmp_path.glob(".cache/checkpoints/*"))


def test_launch_command_uses_the_repository_config():
    from mna_tune.training.distributed import launch_command, needs_launch

    train = tiny_params(num_processes=4, accelerate_config=REPO / "configs/accelerate/fsdp.yaml").train
    command = launch_command(train, ["--params", "p.yaml", "train"])
    assert command[1:3] == ["-m", "accelerate.commands.launch"]
    assert command[command.index("--config_file") + 1] == str(REPO / "configs/accelerate/fsdp.yaml")
    assert command[command.index("--num_processes") + 1] == "4"
    assert command[-4:] == ["mna_tune", "--params", "p.yaml", "train"]
    assert needs_launch(train) and not needs_launch(tiny_params().train)
    for name in ("ddp", "fsdp", "deepspeed_zero3"):
        assert yaml.safe_load((REPO / f"configs/accelerate/{name}.yaml").read_text())["num_machines"] == 1


def test_missing_accelerate_config_is_named():
    import pytest

    from mna_tune.training.distributed import launch_command

    with pytest.raises(ValueError, match="nowhere.yaml"):
        launch_command(tiny_params(num_processes=2, accelerate_config=Path("nowhere.yaml")).train, ["train"])
