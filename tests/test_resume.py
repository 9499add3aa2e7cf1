"""A train stage killed mid-run resumes from its last checkpoint and ends with the same
adapter as an uninterrupted run; changed data or params start fresh."""

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers import cli_env, tiny_params, write_params, write_splits


def prepare(root: Path, **train) -> Path:
    root.mkdir()
    write_splits(root)
    write_params(root, tiny_params(max_steps=24, save_steps=6, save_total_limit=2, **train))
    return root


def train_command(root: Path):
    return dict(
        args=["mna-tune", "train"],
        cwd=root,
        env=cli_env(root),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def adapter_tensors(root: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(root / "models/adapter/adapter_model.safetensors"))


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_adapter(tmp_path):
    """8 rows, batch 2: 4 steps an epoch, so checkpoint-6 sits mid-epoch (see README on
    checkpoints that fall exactly on an epoch boundary)."""
    import torch

    straight = prepare(tmp_path / "straight")
    done = subprocess.run(**train_command(straight))
    assert done.returncode == 0, done.stdout[-3000:]

    interrupted = prepare(tmp_path / "interrupted")
    process = subprocess.Popen(**train_command(interrupted))
    deadline = time.monotonic() + 300
    while not list(interrupted.glob(".cache/checkpoints/*/checkpoint-6/trainer_state.json")):
        assert process.poll() is None, "training ended before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (interrupted / "models/adapter").exists()
    first_run = json.loads(next(interrupted.glob(".cache/checkpoints/*/mlflow_run.json")).read_text())["run_id"]

    resumed = subprocess.run(**train_command(interrupted))
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "resuming from the last checkpoint" in resumed.stdout
    assert json.loads((interrupted / "models/train_run.json").read_text())["run_id"] == first_run
    assert not list(interrupted.glob(".cache/checkpoints/*"))  # cleaned up after success
    a, b = adapter_tensors(straight), adapter_tensors(interrupted)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert json.loads((interrupted / "metrics/train.json").read_text())["steps"] == 24


def test_changed_data_or_params_start_fresh(workspace):
    from mna_tune.training.train import checkpoint_dir

    params = tiny_params()
    base = checkpoint_dir(params)
    assert checkpoint_dir(params) == base
    faster = params.model_copy(update={"train": params.train.model_copy(update={"learning_rate": 0.5})})
    assert checkpoint_dir(faster) != base
    with (workspace / "data/processed/train.jsonl").open("a", encoding="utf-8") as handle:
        handle.write((workspace / "data/processed/val.jsonl").read_text(encoding="utf-8"))
    assert checkpoint_dir(params) != base


@pytest.mark.slow
def test_a_killed_run_replaced_by_other_params_ends_killed(tmp_path):
    """No MLflow run is left RUNNING: a train killed with SIGKILL, then a train with other
    params (which cannot resume it) marks the first run KILLED and drops its checkpoints."""
    import mlflow

    root = prepare(tmp_path / "repo")
    process = subprocess.Popen(**train_command(root))
    deadline = time.monotonic() + 300
    while not list(root.glob(".cache/checkpoints/*/checkpoint-6/trainer_state.json")):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_run = json.loads(next(root.glob(".cache/checkpoints/*/mlflow_run.json")).read_text())["run_id"]

    write_params(root, tiny_params(max_steps=2, learning_rate=0.01))
    done = subprocess.run(**train_command(root))
    assert done.returncode == 0, done.stdout[-3000:]
    assert f"MLflow run {killed_run} was left RUNNING" in done.stdout
    client = mlflow.MlflowClient(f"sqlite:///{root}/mlflow.db")
    assert client.get_run(killed_run).info.status == "KILLED"
    statuses = {run.info.status for run in client.search_runs([client.get_run(killed_run).info.experiment_id])}
    assert statuses == {"KILLED", "FINISHED"}
    assert not list(root.glob(".cache/checkpoints/*"))


def test_a_failure_after_the_run_started_ends_it_failed(workspace, monkeypatch):
    import mlflow
    import pytest

    from mna_tune.training import train

    def broken(*args, **kwargs):
        raise RuntimeError("the trainer could not be built")

    monkeypatch.setattr(train, "build_trainer", broken)
    with pytest.raises(RuntimeError):
        train.run_train(tiny_params())
    client = mlflow.MlflowClient(f"sqlite:///{workspace}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name(tiny_params().mlflow.experiment).experiment_id])
    assert run.info.status == "FAILED" and run.data.tags["error"] == "RuntimeError: the trainer could not be built"
    assert not list(workspace.glob(".cache/checkpoints/*"))  # nothing to resume: nothing left behind


@pytest.mark.slow
def test_a_training_stopped_after_its_last_step_trains_again_with_its_losses(workspace):
    """The input guard stops a train whose inputs changed after the last step, when the
    Trainer has saved its final checkpoint: the next train must not "resume" to zero steps
    (a train loss of 0.0 and no val loss) but train again."""
    import pytest

    from mna_tune.training.train import checkpoint_dir, run_train

    params = tiny_params(max_steps=4, save_steps=2)

    def changed():
        raise RuntimeError("params.yaml changed while the train stage ran")

    with pytest.raises(RuntimeError):
        run_train(params, check_inputs=changed)
    finished = checkpoint_dir(params) / "checkpoint-4/trainer_state.json"
    assert finished.is_file()  # what the next train finds
    metrics = run_train(params)
    assert metrics["steps"] == 4 and metrics["train_loss"] > 0 and metrics["val_loss"] is not None
    assert not checkpoint_dir(params).exists()
